"""`workbench arena ratings` and `workbench arena votes`: read the stored votes, print them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from workbench_arena.ratings import leaderboard

BOOTSTRAP_SEED = 0


def stored_votes(voter: str) -> list[dict[str, Any]]:
    from workbench import locations
    from workbench.store import Store

    if not locations.db_path().exists():  # reading an empty workspace must not create one
        return []
    store = Store(Path(locations.db_path()))
    try:
        return store.list_votes(None if voter == "all" else voter)
    finally:
        store.close()


def names(votes: list[dict[str, Any]]) -> dict[str, str]:
    """Each model's display name, as the newest vote recorded it."""
    out: dict[str, str] = {}
    for v in votes:
        shown = v["details"].get("names", {})
        out[v["model_left"]] = shown.get("left", v["model_left"])
        out[v["model_right"]] = shown.get("right", v["model_right"])
    return out


def ratings_json(votes: list[dict[str, Any]], bootstrap: int) -> list[dict[str, Any]]:
    shown = names(votes)
    return [{**r.to_json(), "name": shown.get(r.model, r.model)}
            for r in leaderboard(votes, bootstrap=bootstrap, seed=BOOTSTRAP_SEED)]


def show_ratings(args: argparse.Namespace) -> int:
    from workbench.errors import UserError
    from workbench.output import console, print_json

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap} is not a number of resamples; use 0 or more")
    voter = args.voter or "human"  # judge votes re-judge the same comparisons: not counted twice
    votes = stored_votes(voter)
    rows = ratings_json(votes, args.bootstrap)
    if getattr(args, "json", False):
        print_json({"voter": voter, "votes": len(votes), "bootstrap": args.bootstrap, "ratings": rows})
        return 0
    if not rows:
        who = "" if voter == "all" else f"{voter} "
        console().print(f"no {who}votes yet; start with `workbench arena MODEL MODEL`")
        return 0
    from rich.table import Table

    t = Table(title=f"Arena ratings ({len(votes)} {'' if voter == 'all' else voter + ' '}votes; "
              "Bradley–Terry, Elo scale)", title_justify="left")
    for col in ("#", "model", "rating", "95% CI", "votes", "W / T / L"):
        t.add_column(col, justify="right" if col not in ("model",) else "left")
    for rank, r in enumerate(rows, start=1):
        ci = f"{r['ci_low']:.0f} – {r['ci_high']:.0f}" if args.bootstrap else "-"
        t.add_row(str(rank), r["name"], f"{r['rating']:.0f}", ci, str(r["votes"]),
                  f"{r['wins']} / {r['ties']} / {r['losses']}")
    console().print(t)
    return 0


def show_votes(args: argparse.Namespace) -> int:
    from workbench.output import console, print_json

    votes = stored_votes(args.voter or "all")
    if getattr(args, "json", False):
        print_json(votes)
        return 0
    if not votes:
        console().print("no votes yet; start with `workbench arena MODEL MODEL`")
        return 0
    from rich.table import Table

    shown = names(votes)
    t = Table(title="Arena votes", title_justify="left")
    for col in ("id", "when", "voter", "A (left)", "B (right)", "vote", "prompt"):
        t.add_column(col)
    for v in votes:
        t.add_row(v["id"], time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"])), v["voter"],
                  shown[v["model_left"]], shown[v["model_right"]], v["vote"], v["prompt"][:40])
    console().print(t)
    return 0
