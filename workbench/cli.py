"""The `workbench` command: a thin face over the core.

Only the modules a command needs are imported: `workbench --help`, `plugins` and `runs ls`
never import torch, litgpt or llama_cpp. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from workbench import __version__
from workbench.errors import UserError, disk_full, is_database_error
from workbench.output import console, print_json

CORE_COMMANDS = {
    "plugins": "List installed stage plugins and commands, with their status",
    "doctor": "Report Python, torch, device, precision, llama.cpp and disk; --clean removes leftovers of stopped runs",
    "models": "List, show (with lineage) and remove artifacts in the workspace",
    "runs": "List, follow, cancel and resume runs",
    "demo": "Run the whole lifecycle on the embedded data, offline",
    "tui": "Open the terminal workbench (same as `workbench` with no command)",
}
EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 130}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def _common() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="Print machine-readable JSON")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="Show tracebacks for errors")
    return common


# ----------------------------------------------------------------------------------------------
# parser construction (lazy: only what argv needs)


def build_parser(argv: Sequence[str]) -> Parser:
    from workbench import stages

    common = _common()
    parser = Parser(
        prog="workbench",
        description="A local-first LLM workbench. Run with no command to open the terminal UI.",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    first = next((a for a in argv if not a.startswith("-")), None)
    stage_infos = stages.discover(stages.STAGE_GROUP)
    command_infos = stages.discover(stages.COMMAND_GROUP)
    groups: dict[str, list[stages.PluginInfo]] = {}
    for info in stage_infos:
        groups.setdefault(info.name.split(".")[0], []).append(info)
    # Only the command in argv is configured (and its plugin imported); the top-level help
    # lists the others with the summaries the plugin index recorded.
    for name, summary in CORE_COMMANDS.items():
        if first == name:
            p = sub.add_parser(name, help=summary, description=summary, parents=[common])
            _CONFIGURE[name](p, common)
        else:
            sub.add_parser(name, help=summary, add_help=False)

    for top, infos in groups.items():
        if first != top:
            sub.add_parser(top, help=_indexed_help(infos, f"{top} stages"), add_help=False)
            continue
        if len(infos) == 1 and "." not in infos[0].name:
            _add_stage_parser(sub, stages.load(infos[0]), top, common)
        else:
            summary = _indexed_help(infos, f"{top} stages")
            gp = sub.add_parser(top, help=summary, description=summary, parents=[common])
            gsub = gp.add_subparsers(dest="subcommand", metavar="STAGE", required=True)
            # `finetune lora ...` loads the lora stage only; `finetune --help` loads none.
            second = next((a for a in argv[argv.index(top) + 1:] if not a.startswith("-")), None)
            for info in infos:
                name = info.name.split(".", 1)[1]
                if second == name:
                    _add_stage_parser(gsub, stages.load(info), name, common)
                else:
                    gsub.add_parser(name, help=_indexed_help([info], f"{name} stage"), add_help=False)

    for info in command_infos:
        if first != info.name:
            sub.add_parser(info.name, help=_indexed_help([info], f"{info.name} command"), add_help=False)
            continue
        stages.load(info)
        if not info.ok:
            sub.add_parser(info.name, help=f"(unavailable: {info.error})", add_help=False).set_defaults(
                handler=lambda a, i=info: _broken(i))
            continue
        cmd = info.obj
        cp = sub.add_parser(cmd.name, help=cmd.summary, description=cmd.description or cmd.summary,
                            parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.configure(cp)
        cp.set_defaults(handler=lambda a, c=cmd: c.main(a))
    return parser


def _indexed_help(infos: list[Any], fallback: str) -> str:
    """A command's line in the top-level help, from the plugin index (nothing imported)."""
    if len(infos) == 1 and infos[0].indexed_error:
        return f"(unavailable: {infos[0].indexed_error})"
    return "; ".join(i.summary for i in infos if i.summary) or fallback


def _broken(info: Any) -> int:
    raise UserError(f"'{info.name}' from {info.package} cannot be loaded: {info.error}")


def _add_stage_parser(sub: Any, info: Any, cli_name: str, common: argparse.ArgumentParser) -> None:
    from workbench.options import add_arguments

    if not info.ok:
        p = sub.add_parser(cli_name, help=f"(unavailable: {info.error})", add_help=False)
        p.set_defaults(handler=lambda a, i=info: _broken(i))
        return
    stage = info.obj
    caps = [c for c, on in (("resume", stage.supports_resume), ("cancel", stage.supports_cancel),
                            ("needs GPU", stage.needs_gpu)) if on]
    epilog = stage.description.strip() + "\n\n" if stage.description else ""
    epilog += (f"consumes: {', '.join(stage.consumes) or '-'}   produces: {', '.join(stage.produces) or '-'}"
               f"   supports: {', '.join(caps) or '-'}")
    p = sub.add_parser(cli_name, help=stage.summary, description=stage.summary, epilog=epilog,
                       parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, stage.Options)
    run_opts = p.add_argument_group("run control")
    run_opts.add_argument("--config", metavar="FILE", help="Read options from a YAML, TOML or JSON file (flags win)")
    run_opts.add_argument("--detach", action="store_true", help="Start the run and return at once")
    run_opts.add_argument("--schema", action="store_true", help="Print the options' JSON schema and exit")
    p.set_defaults(handler=lambda a, n=info.name: cmd_stage(n, a))


# ----------------------------------------------------------------------------------------------
# output helpers


def print_result(result: dict[str, Any] | None) -> None:
    """A stage's result: its tables, then its scalar fields."""
    from rich.table import Table

    if not result:
        return
    con = console()
    for table in result.get("tables", []):
        t = Table(title=table.get("title"), title_justify="left")
        for col in table["columns"]:
            t.add_column(str(col))
        for row in table["rows"]:
            t.add_row(*[_fmt(v) for v in row])
        con.print(t)
    for key, value in result.items():
        if key != "tables" and not isinstance(value, (dict, list)):
            con.print(f"[bold]{key}[/]: {_fmt(value)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _duration(run: Any) -> str:
    if not run.started_at:
        return "-"
    end = run.ended_at or time.time()
    s = int(end - run.started_at)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _open_store(create: bool = True) -> Any:
    from workbench import locations
    from workbench.store import Store

    if not create and not locations.db_path().exists():
        return Store(Path(":memory:"))  # nothing recorded yet: read an empty index, write nothing
    return Store()


# ----------------------------------------------------------------------------------------------
# stage runs


def cmd_stage(stage_name: str, args: argparse.Namespace) -> int:
    from workbench import runs
    from workbench.options import json_schema, load_config
    from workbench.stages import get_stage

    stage_cls = get_stage(stage_name)
    if args.schema:
        print_json(json_schema(stage_cls.Options, title=stage_name))
        return 0
    values: dict[str, Any] = load_config(args.config) if args.config else {}
    reserved = {"command", "subcommand", "action", "handler", "config", "detach", "schema", "json", "debug"}
    values.update({k: v for k, v in vars(args).items() if k not in reserved})
    # Validate against an index that is only read, so bad input leaves the workspace untouched.
    runs.resolve_options(stage_name, values, _open_store(create=False))
    store = _open_store()
    run, proc = runs.start(stage_name, values, store)
    return _after_start(run, proc, store, args)


def _after_start(run: Any, proc: Any, store: Any, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    if getattr(args, "detach", False):
        if as_json:
            print_json({"run_id": run.id, "status": run.status, "pid": proc.pid, "run_dir": str(run.run_dir)})
        else:
            console(stderr=True).print(
                f"started run [bold]{run.id}[/] ({run.stage}) in the background; "
                f"follow it with `workbench runs attach {run.id}`")
        return 0
    return follow_cli(run, store, proc, as_json=as_json)


def follow_cli(run: Any, store: Any, proc: Any = None, *, as_json: bool = False, offset: int = 0) -> int:
    """Follow a run to its end with a progress bar and a live metric line.

    The first Ctrl-C cancels the run (it checkpoints if it can); a second one detaches.
    """
    from workbench import runs
    from workbench.cli_progress import RunView

    interrupts = 0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            try:
                runs.cancel(run.id, store)
            except UserError:
                pass
            # The loop below says so: printing here could land inside a write it is making.
        else:
            raise KeyboardInterrupt

    view = RunView(run, quiet=as_json)
    old = signal.signal(signal.SIGINT, on_sigint)
    final: dict[str, Any] | None = None
    noted = False
    try:
        with view:
            for event in runs.follow_run(run, store, proc, offset=offset):
                if interrupts and not noted:
                    view.note("cancelling… (Ctrl-C again to detach and leave it running)")
                    noted = True
                view.update(event)
                if event["type"] in ("done", "failed", "cancelled"):
                    final = event
    except KeyboardInterrupt:
        console(stderr=True).print(f"detached; run {run.id} goes on. `workbench runs attach {run.id}` follows it again")
        return 0
    finally:
        signal.signal(signal.SIGINT, old)
    run = store.get_run(run.id)
    status = final["type"] if final else run.status
    if as_json:
        arts = [a.to_json() for a in store.list_artifacts() if a.run_id == run.id]
        print_json({"run_id": run.id, "stage": run.stage, "status": status,
                    "result": (final or {}).get("result"), "error": (final or {}).get("error"),
                    "artifacts": arts})
    elif status == "done":
        print_result((final or {}).get("result") or run.result)
    elif status == "failed":
        msg = (final or {}).get("error") or run.exit_reason or "unknown error"
        console(stderr=True).print(f"[red]error:[/] run {run.id} failed: {msg}", soft_wrap=True)
        if not (final and final.get("user_error")):  # a bug's traceback is in the logs
            console(stderr=True).print(f"  logs: workbench runs logs {run.id}")
    elif status == "cancelled":
        console(stderr=True).print(f"run {run.id} cancelled; `workbench runs resume {run.id}` continues it")
    if status == "failed" and final and final.get("user_error"):
        return 2
    return EXIT_CODES.get(status, 1)


# ----------------------------------------------------------------------------------------------
# core commands


def _configure_plugins(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.set_defaults(handler=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from workbench.stages import all_plugins

    infos = all_plugins()
    if getattr(args, "json", False):
        print_json([{"name": i.name, "kind": "stage" if i.group.endswith("stages") else "command",
                     "package": i.package, "version": i.version, "status": i.status,
                     "error": i.error, "summary": i.summary} for i in infos])
        return 0
    t = Table(title="Plugins", title_justify="left")
    for col in ("name", "kind", "package", "version", "status", "summary"):
        t.add_column(col)
    for i in infos:
        status = "[green]ok[/]" if i.ok else f"[red]error[/]: {i.error.splitlines()[0][:80]}"
        t.add_row(i.name, "stage" if i.group.endswith("stages") else "command", i.package, i.version,
                  status, i.summary)
    console().print(t)
    return 0


def _configure_doctor(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--clean", action="store_true",
                   help="Remove what killed or crashed runs left behind (artifact staging directories, "
                        "token-cache and checkpoint temporary files) and report the bytes freed; "
                        "files of runs still running are kept")
    p.set_defaults(handler=cmd_doctor)


def _clean_workspace(as_json: bool) -> dict[str, Any]:
    from workbench import locations, scratch
    from workbench.hardware import fmt_bytes

    if not locations.db_path().exists():
        found: list[Any] = []
        freed = 0
    else:
        found, freed = scratch.clean(_open_store())
    home = locations.home()
    if not as_json:
        for f in found:
            console().print(f"removed {f.path.relative_to(home)} ({fmt_bytes(f.size_bytes)}, left by {f.owner})")
        console().print(f"removed {len(found)} leftover(s) of stopped runs, freed {fmt_bytes(freed)} ({freed} bytes)")
    return {"removed": [str(f.path) for f in found], "freed_bytes": freed}


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from workbench.hardware import doctor
    from workbench.stages import all_plugins

    cleaned = _clean_workspace(getattr(args, "json", False)) if args.clean else None
    report = doctor()
    if cleaned is not None:
        report["clean"] = cleaned
    report["plugins"] = {i.name: i.status if i.ok else f"error: {i.error}" for i in all_plugins()}
    if getattr(args, "json", False):
        print_json(report)
        return 0
    t = Table(title="workbench doctor", title_justify="left", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    for key in ("python", "platform", "workspace", "disk_free"):
        t.add_row(key, str(report[key]))
    for section in ("torch", "llama_cpp", "packages", "plugins"):
        for k, v in report[section].items():
            t.add_row(f"{section}.{k}", str(v))
    console().print(t)
    return 0


def _configure_models(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="List artifacts", parents=[common])
    ls.add_argument("--kind", help="Only this kind (model, adapter, dataset, tokenizer, gguf, eval-report, …)")
    show = sub.add_parser("show", help="Show one artifact and its lineage", parents=[common])
    show.add_argument("ref", metavar="ARTIFACT")
    rm = sub.add_parser("rm", help="Remove an artifact and its files", parents=[common])
    rm.add_argument("ref", metavar="ARTIFACT")
    rm.add_argument("--yes", "-y", action="store_true", help="Do not ask for confirmation")
    rm.add_argument("--hf-cache", action="store_true",
                    help="Also delete the Hugging Face cache entry it came from (shared with other tools)")
    p.set_defaults(handler=cmd_models)
    _configure_models_import(sub, common)


def _configure_models_import(sub: Any, common: argparse.ArgumentParser) -> None:
    """`models import` is the `import` stage under the name users look for it by."""
    from workbench import stages

    info = next((i for i in stages.discover(stages.STAGE_GROUP) if i.name == "import"), None)
    if info is None:
        sub.add_parser("import", help="(unavailable: the import plugin is not installed)",
                       add_help=False).set_defaults(handler=lambda a: _missing("models import"))
        return
    _add_stage_parser(sub, stages.load(info), "import", common)


def _id_column(table: Any, ids: Iterable[str]) -> None:
    """An id is what the next command needs: never cut it short, let the other columns give way."""
    table.add_column("id", no_wrap=True, min_width=max((len(i) for i in ids), default=2))


def _fitting_columns(columns: dict[str, list[str]], width: int, keep: tuple[str, ...]) -> list[str]:
    """The `keep` columns, then each other column (in order) whose widest line still fits in
    `width` beside those already chosen; the order of `columns` is kept."""

    def need(name: str) -> int:
        return max(len(line) for cell in [name, *columns[name]] for line in cell.split("\n"))

    chosen = set(keep)
    used = sum(need(n) for n in keep) + 2 * (len(keep) - 1)
    for name in columns:
        if name not in chosen and used + 2 + need(name) <= width:
            chosen.add(name)
            used += 2 + need(name)
    return [name for name in columns if name in chosen]


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.tree import Tree

    from workbench.hardware import fmt_bytes

    store = _open_store(create=False)
    as_json = getattr(args, "json", False)
    if args.action == "ls":
        arts = store.list_artifacts(args.kind)
        if as_json:
            print_json([a.to_json() for a in arts])
            return 0
        if not arts:
            console().print("no artifacts yet; start with `workbench demo` or `workbench data prepare`")
            return 0
        # One metric (and one parent) per line, so a cell breaks between items, not inside one.
        columns: dict[str, list[str]] = {
            "id": [a.id for a in arts], "kind": [a.kind for a in arts], "name": [a.name for a in arts],
            "size": [fmt_bytes(a.size_bytes) for a in arts], "created": [_ago(a.created_at) for a in arts],
            "key metrics": ["\n".join(f"{k}={_fmt(v)}" for k, v in list(a.metrics.items())[:3]) for a in arts],
            "parents": ["\n".join(a.parents) for a in arts],
        }
        con = console()
        shown = _fitting_columns(columns, con.width, keep=("id", "kind", "name", "size"))
        t = Table(title=f"Artifacts in {_workspace()}", title_justify="left", box=None, pad_edge=False)
        _id_column(t, columns["id"])
        for name in shown[1:]:
            t.add_column(name, overflow="fold", no_wrap=name in ("kind", "size", "created"))
        for row in zip(*(columns[name] for name in shown), strict=True):
            t.add_row(*row)
        con.print(t)
        left_out = [name for name in columns if name not in shown]
        if left_out:
            con.print(f"[dim]{', '.join(left_out)} left out for the terminal's width; "
                      "`workbench models show ID` or `models ls --json` has them[/]")
        return 0
    art = store.find_artifact(args.ref)
    if args.action == "show":
        lineage = store.lineage(art.id)
        if as_json:
            print_json({**art.to_json(), "lineage": [
                {"depth": d, "artifact": a.to_json(), "run": r.to_json() if r else None} for d, a, r in lineage]})
            return 0
        con = console()
        t = Table(show_header=False, title=f"{art.kind} {art.id}", title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in (("name", art.name), ("path", str(art.path)), ("size", fmt_bytes(art.size_bytes)),
                     ("created", _ago(art.created_at)), ("run", art.run_id or "-")):
            t.add_row(k, v)
        for k, v in art.metrics.items():
            t.add_row(f"metric {k}", _fmt(v))
        for k, v in art.metadata.items():
            t.add_row(f"meta {k}", json.dumps(v) if isinstance(v, (dict, list)) else _fmt(v))
        con.print(t)
        tree = Tree("[bold]lineage[/] (how it was made)")
        nodes: dict[int, Any] = {-1: tree}
        for depth, a, r in lineage:
            made = f" ← {r.stage} run {r.id}" if r else ""
            nodes[depth] = nodes[depth - 1].add(f"[bold]{a.id}[/] {a.kind} '{a.name}'{made}")
        con.print(tree)
        return 0
    # rm
    children = store.children(art.id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"refusing to remove {art.id} without confirmation; pass --yes")
        extra = f" ({len(children)} artifacts were made from it and stay)" if children else ""
        answer = input(f"remove {art.kind} {art.id} '{art.name}' and {fmt_bytes(art.size_bytes)} of files{extra}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    _remove_artifact_files(art, hf_cache=args.hf_cache)
    store.remove_artifact(art.id)
    if as_json:
        print_json({"removed": art.id, "freed_bytes": art.size_bytes})
    else:
        console().print(f"removed {art.id}, freed {fmt_bytes(art.size_bytes)}")
    return 0


def _remove_artifact_files(art: Any, *, hf_cache: bool) -> None:
    import shutil

    from workbench import locations

    home = locations.home()
    target = art.path
    # Artifacts registered from a file live in their own directory named by id.
    if target.parent.name == art.id:
        target = target.parent
    if home in target.parents and target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    repo = art.metadata.get("hf_repo_id")
    if hf_cache and repo:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
        repo_type = art.metadata.get("hf_repo_type", "model")  # a model and a dataset may share an id
        revs = [r.commit_hash for repo_info in info.repos if (repo_info.repo_id, repo_info.repo_type) == (repo, repo_type)
                for r in repo_info.revisions]
        if revs:
            info.delete_revisions(*revs).execute()


def _workspace() -> str:
    from workbench import locations

    return str(locations.home())


def _configure_runs(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="List runs, newest first", parents=[common])
    ls.add_argument("--limit", type=int, default=30)
    for name, helptext in (("show", "Show a run"), ("attach", "Follow a running run again"),
                           ("cancel", "Ask a run to stop (it checkpoints if it can)"),
                           ("resume", "Continue a cancelled or failed run from its last checkpoint")):
        sp = sub.add_parser(name, help=helptext, parents=[common])
        sp.add_argument("ref", metavar="RUN")
        if name == "resume":
            sp.add_argument("--detach", action="store_true", help="Return at once")
    logs = sub.add_parser("logs", help="Print a run's log lines (and its stderr with --stderr)", parents=[common])
    logs.add_argument("ref", metavar="RUN")
    logs.add_argument("--stderr", action="store_true", help="Print the worker's stderr instead")
    p.set_defaults(handler=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from workbench import runs
    from workbench.events import read_events

    as_json = getattr(args, "json", False)
    store = _open_store(create=False)
    if args.action == "ls":
        items = runs.list_runs(store, limit=args.limit)
        if as_json:
            print_json([r.to_json() for r in items])
            return 0
        t = Table(title="Runs", title_justify="left", box=None, pad_edge=False)
        _id_column(t, (r.id for r in items))
        t.add_column("stage", no_wrap=True)
        t.add_column("status", no_wrap=True)
        for col in ("started", "took", "reason"):
            t.add_column(col, overflow="fold")
        colors = {"done": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
        for r in items:
            t.add_row(r.id, r.stage, f"[{colors.get(r.status, 'white')}]{r.status}[/]", _ago(r.started_at),
                      _duration(r), (r.exit_reason or "")[:60])
        console().print(t if items else "no runs yet")
        return 0
    if args.action == "show":
        run = runs.get(args.ref, store)
        events = read_events(run.run_dir / "events.jsonl")
        last_metrics: dict[str, Any] = {}
        for e in events:
            if e["type"] == "metric":
                last_metrics.update(e["values"])
        arts = [a for a in store.list_artifacts() if a.run_id == run.id]
        if as_json:
            print_json({**run.to_json(), "last_metrics": last_metrics, "artifacts": [a.to_json() for a in arts]})
            return 0
        t = Table(show_header=False, title=f"run {run.id}", title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in (("stage", run.stage), ("plugin", f"{run.plugin} {run.plugin_version}"),
                     ("status", run.status), ("reason", run.exit_reason or "-"),
                     ("started", _ago(run.started_at)), ("took", _duration(run)),
                     ("attempts", str(run.attempts)), ("checkpoint", run.checkpoint or "-"),
                     ("directory", str(run.run_dir))):
            t.add_row(k, v)
        for k, v in run.options.items():
            t.add_row(f"option {k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v))
        for k, v in last_metrics.items():
            t.add_row(f"metric {k}", _fmt(v))
        for a in arts:
            t.add_row("artifact", f"{a.id} ({a.kind}) {a.name}")
        console().print(t)
        return 0
    if args.action == "logs":
        run = store.get_run(args.ref)
        if args.stderr:
            path = run.run_dir / "stderr.log"
            sys.stdout.write(path.read_text(errors="replace") if path.exists() else "")
            return 0
        for e in read_events(run.run_dir / "events.jsonl"):
            if as_json:
                sys.stdout.write(json.dumps(e) + "\n")
            elif e["type"] in ("log", "started", "checkpoint", "artifact", "done", "failed", "cancelled"):
                sys.stdout.write(f"{time.strftime('%H:%M:%S', time.localtime(e['time']))} {_describe(e)}\n")
        return 0
    if args.action == "attach":
        run = runs.get(args.ref, store)
        if run.status not in runs.ACTIVE and not as_json:
            console(stderr=True).print(f"run {run.id} is {run.status}; showing how it went")
        return follow_cli(run, store, as_json=as_json)
    if args.action == "cancel":
        run = runs.cancel(args.ref, store)
        if as_json:
            print_json({"run_id": run.id, "status": "cancelling"})
        else:
            console(stderr=True).print(f"asked run {run.id} to stop")
        return 0
    if args.action == "resume":
        offset = runs.events_size(store.get_run(args.ref))
        run, proc = runs.resume(args.ref, store)
        if getattr(args, "detach", False):
            return _after_start(run, proc, store, args)
        return follow_cli(run, store, proc, as_json=as_json, offset=offset)
    raise UserError(f"unknown action {args.action}")


def _describe(e: dict[str, Any]) -> str:
    t = e["type"]
    if t == "log":
        return f"[{e.get('level', 'info')}] {e['message']}"
    if t == "started":
        return f"started (attempt {e.get('attempt')}, pid {e.get('pid')})" + (
            f", resuming from {e['resume_from']}" if e.get("resume_from") else "")
    if t == "checkpoint":
        return f"checkpoint at step {e['step']}: {e['path']}"
    if t == "artifact":
        return f"artifact {e['id']} ({e['kind']}) {e['name']}"
    if t == "failed":
        return f"failed: {e['error']}"
    return t


def _configure_demo(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    try:
        from workbench.demo import configure
    except ImportError:
        p.set_defaults(handler=lambda a: _missing("demo"))
        return
    configure(p)


def _configure_tui(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.set_defaults(handler=lambda a: run_tui())


def _missing(what: str) -> int:
    raise UserError(f"`workbench {what}` is not available in this installation")


def run_tui() -> int:
    try:
        from workbench.tui.app import main as tui_main
    except ImportError as exc:
        raise UserError(f"the terminal UI cannot start: {exc}") from None
    return tui_main()


_CONFIGURE = {
    "plugins": _configure_plugins, "doctor": _configure_doctor, "models": _configure_models,
    "runs": _configure_runs, "demo": _configure_demo, "tui": _configure_tui,
}


def _disk_full_line(exc: BaseException) -> str:
    from workbench import locations

    full = disk_full(exc)
    filename = getattr(full, "filename", None)
    if filename:
        return f"disk full while writing {filename}"
    if full is not None and is_database_error(full):
        return f"disk full while writing the workspace database {locations.db_path()}"
    return f"disk full: {full}"


# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("WORKBENCH_DEBUG") == "1"
    try:
        if not argv or argv == ["--debug"]:
            return run_tui()
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        return int(handler(args) or 0)
    except UserError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            raise
        if disk_full(exc) is not None:  # not a bug: one line saying so, like bad input
            sys.stderr.write(f"error: {_disk_full_line(exc)}\n")
            return 2
        sys.stderr.write(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
