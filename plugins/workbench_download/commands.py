"""`workbench search QUERY`: find models on the Hugging Face Hub before downloading one.

Light module: the Hub client loads when a search runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.errors import UserError
from workbench.stages import Command, Finder
from workbench_download import hub


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", metavar="QUERY", help="part of a repository id (llama, SmolLM2, Qwen/Qwen2.5)")
    parser.add_argument("--limit", type=int, default=20, help="how many models to list (default: 20)")


def main(args: argparse.Namespace) -> int:
    if not args.query.strip():
        raise UserError("QUERY is empty; give part of a repository id, for example SmolLM2")
    if not 1 <= args.limit <= 1000:
        raise UserError(f"--limit must be between 1 and 1000, not {args.limit}")
    rows = hub.search(args.query, limit=args.limit)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Hub models matching {args.query!r}, most downloaded first", title_justify="left")
    for key, header, kind in hub.COLUMNS:
        table.add_column(header, justify="right" if kind in ("count", "bytes") else "left",
                         no_wrap=key == "id")
    for row in rows:
        table.add_row(*(Finder.cell(row.get(key), kind) for key, _, kind in hub.COLUMNS))
    console = Console()
    if not console.is_terminal:  # piped: whole values, not cells cut to 80 columns
        console = Console(width=200)
    console.print(table if rows else f"no model on the Hub matches {args.query!r}")
    if rows:
        console.print("download one with: workbench download REPO_ID (GGUF repositories: --gguf-file Q4_K_M)")
    return 0


search = Command(
    name="search",
    summary="Search the Hugging Face Hub for models: downloads, size, licence",
    configure=configure,
    main=main,
    description=(
        "Lists models whose id contains QUERY, most downloaded first, with their size, parameter count,\n"
        "licence and whether they ship GGUF files or are gated. Needs the network (HF_ENDPOINT is honoured);\n"
        "with HF_HUB_OFFLINE=1 it says so instead.\n\n"
        "example: workbench search SmolLM2"
    ),
)
