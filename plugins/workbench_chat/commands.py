"""`workbench chat`, `workbench serve` and `workbench monitor`.

Only argparse is imported here: building the parsers stays instant, and the engines (llama_cpp,
torch) load inside `main` when a model is opened.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workbench.errors import UserError
from workbench.options import finite_float
from workbench.stages import Command

SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "repeat_penalty", "seed", "max_tokens", "stop")

CHAT_DESCRIPTION = """\
Talk to a GGUF build (llama.cpp) or a LitGPT checkpoint (torch), offline.

MODEL is a gguf or model artifact (id or name, see `workbench models ls`), a .gguf file, or a
checkpoint directory. Replies stream to stdout; notes and the speed of each reply (tokens/s,
time to first token) go to stderr. Conversations are saved in the workspace.

examples:
  workbench chat my-model-q4 --system "Answer briefly."
  printf 'hello\\n/exit\\n' | workbench chat ./model.gguf --temperature 0
  workbench chat --list
  workbench chat --resume chat-250101-ab12cd
  workbench chat --export chat-250101-ab12cd --format json -o chat.json
  workbench chat MODEL --jsonl     (JSON lines on stdin/stdout, for programs; see docs/chat.md)
"""

SERVE_DESCRIPTION = """\
Serve a model over an OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions and
/v1/completions (both streaming with "stream": true). Binds to 127.0.0.1 by default, so only
programs on this machine can reach it. Requests must name this server in Host, send JSON
bodies as application/json, and come from no web page unless its origin is allowed
(--allow-origin). Another --host needs an API key. Every request is recorded in the workspace
(time, latency, tokens, status; prompt text only with --log-prompts): `workbench monitor` shows
the figures. See docs/chat.md.

examples:
  workbench serve my-model-q4 --port 8080
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "hi"}]}'
  WORKBENCH_API_KEY=s3cret workbench serve my-model-q4 --host 0.0.0.0
  workbench serve my-model-q4 --allow-origin http://localhost:3000
"""


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--n-ctx", type=int, metavar="N",
                   help="Context window in tokens (default: the model's, at most 4096)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: the physical cores other processes leave free, "
                   "looked at again before each reply)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="Device for LitGPT checkpoints (GGUF runs through llama.cpp on the CPU)")
    g.add_argument("--response-cache", action="store_true",
                   help="Serve repeated temperature-0 requests from a cache in the workspace")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: temperature 0.8, top-p 0.95, top-k 40, "
                             "repeat penalty 1.0, max tokens 512)")
    g.add_argument("--temperature", type=finite_float, help="0 picks the most likely token every time")
    g.add_argument("--top-p", type=finite_float, help="Sample from the smallest set of tokens whose probability reaches P")
    g.add_argument("--top-k", type=int, help="Sample from the K most likely tokens (0: all)")
    g.add_argument("--repeat-penalty", type=finite_float, help="Penalise tokens seen in the last 64 (1.0: off)")
    g.add_argument("--seed", type=int, help="Seed for sampling, for reproducible replies")
    g.add_argument("--max-tokens", type=int, help="Longest reply in tokens")
    g.add_argument("--stop", action="append", metavar="TEXT",
                   help="Stop the reply at this text (repeatable); the template's turn end always stops it")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags that were given on the command line."""
    return {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k, None) is not None}


# ----------------------------------------------------------------------------------------------
# chat


def configure_chat(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="gguf or model artifact, .gguf file, or LitGPT checkpoint directory")
    p.add_argument("--system", metavar="TEXT", help="System prompt")
    p.add_argument("--jsonl", action="store_true",
                   help="Speak JSON lines on stdin/stdout instead of the REPL (for programs)")
    p.add_argument("--no-save", action="store_true", help="Do not store this conversation in the workspace")
    p.add_argument("--no-prompt-cache", action="store_true",
                   help="Process the whole conversation again every turn (for measurements)")
    _add_model_options(p)
    _add_sampling_options(p)
    h = p.add_argument_group("conversations")
    actions = h.add_mutually_exclusive_group()
    actions.add_argument("--resume", metavar="ID", help="Continue a stored conversation (MODEL defaults to its model)")
    actions.add_argument("--list", action="store_true", help="List stored conversations")
    actions.add_argument("--export", metavar="ID", help="Print a stored conversation (or write it with -o)")
    actions.add_argument("--delete", metavar="ID", help="Delete a stored conversation")
    h.add_argument("--format", choices=["json", "markdown"],
                   help="Export format (default: from the -o file name, else markdown)")
    h.add_argument("-o", "--output", metavar="FILE", help="Write the export to FILE")


def main_chat(args: argparse.Namespace) -> int:
    if args.list or args.export or args.delete:
        return _conversations(args)
    from workbench import locations
    from workbench.store import Store
    from workbench_chat.engine import Sampling, open_engine, resolve_model
    from workbench_chat.repl import Repl, run_jsonl
    from workbench_chat.respcache import ResponseCache
    from workbench_chat.session import ChatSession

    # Everything that can be wrong is checked before the workspace is touched.
    sampling = Sampling().updated(sampling_overrides(args))
    conv = None
    if args.resume:
        if args.no_save:
            raise UserError("--no-save cannot be combined with --resume: the conversation is already stored")
        if not locations.db_path().exists():
            raise UserError(f"no conversation '{args.resume}': the workspace has none yet")
        conv = Store().get_conversation(args.resume)
    ref = args.model or (conv["model"] if conv else None)
    if not ref:
        raise UserError("name a model: `workbench chat MODEL` (see `workbench models ls`), or --resume ID")
    model = resolve_model(ref)
    engine = open_engine(model, n_ctx=args.n_ctx, threads=args.threads, device=args.device,
                         prompt_cache=not args.no_prompt_cache)
    store = None if args.no_save else Store()
    cache = ResponseCache() if args.response_cache else None
    if conv is not None:
        session = ChatSession.resume(engine, store, conv["id"], response_cache=cache)
        session.sampling = session.sampling.updated(sampling_overrides(args))
        if args.system is not None:
            session.set_system(args.system)
    else:
        session = ChatSession(engine, store=store, model_ref=model.ref, system=args.system or "",
                              sampling=sampling, response_cache=cache)
    try:
        if args.jsonl:
            return run_jsonl(session)
        return Repl(session).run()
    finally:
        engine.close()


def _conversations(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from workbench import locations
    from workbench.output import console, print_json
    from workbench.store import Store
    from workbench_chat import history

    # Reading an empty workspace must not create one.
    store = Store() if locations.db_path().exists() else Store(Path(":memory:"))
    if args.list:
        convs = store.list_conversations()
        if getattr(args, "json", False):
            print_json(convs)
            return 0
        if not convs:
            console().print("no conversations yet; start one with `workbench chat MODEL`")
            return 0
        from rich.table import Table

        t = Table(title="Conversations", title_justify="left")
        for col in ("id", "title", "model", "messages", "updated"):
            t.add_column(col)
        for c in convs:
            t.add_row(c["id"], c["title"], c["model"], str(c["n"]),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(c["updated_at"])))
        console().print(t)
        return 0
    if args.delete:
        conv = store.get_conversation(args.delete)
        store.delete_conversation(conv["id"])
        if getattr(args, "json", False):
            print_json({"deleted": conv["id"]})
        else:
            console(stderr=True).print(f"deleted {conv['id']} ({len(conv['messages'])} messages)")
        return 0
    conv = store.get_conversation(args.export)
    fmt = args.format or (history.format_for(args.output) if args.output else "markdown")
    text = history.export(conv, fmt)
    if args.output:
        Path(args.output).expanduser().write_text(text, encoding="utf-8")
        console(stderr=True).print(f"wrote {args.output} ({fmt})")
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------------------------
# serve


def configure_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="gguf or model artifact, .gguf file, or LitGPT checkpoint directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="Port (0 picks a free one; default 8080)")
    p.add_argument("--model-name", metavar="NAME", help="Model id reported by /v1/models (default: the artifact name)")
    p.add_argument("--api-key", metavar="KEY",
                   help="Require 'Authorization: Bearer KEY' (default: $WORKBENCH_API_KEY, which keeps the key "
                   "out of the process list); required with a --host other than loopback")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="Let web pages from ORIGIN (e.g. http://localhost:3000) call the API, with CORS; "
                   "repeatable or comma-separated; '*' allows any page")
    _add_model_options(p)
    m = p.add_argument_group("monitoring (see `workbench monitor`)")
    m.add_argument("--log-prompts", action="store_true",
                   help="Store each request's prompt text too (default: only its length and hashed word counts)")
    m.add_argument("--monitor-max-mb", type=finite_float, default=None, metavar="MB",
                   help="Cap on the request log; the oldest requests are dropped past it (default 64)")
    m.add_argument("--no-monitor", action="store_true", help="Record nothing")


def main_serve(args: argparse.Namespace) -> int:
    from workbench.monitoring import DEFAULT_MAX_MB
    from workbench_chat.engine import open_engine, resolve_model
    from workbench_chat.monitor import Recorder
    from workbench_chat.respcache import ResponseCache
    from workbench_chat.server import bind, check_api_key, parse_origins, serve

    key = args.api_key if args.api_key is not None else os.environ.get("WORKBENCH_API_KEY") or None
    check_api_key(key, args.host)
    origins = parse_origins(args.allow_origin)
    max_mb = args.monitor_max_mb if args.monitor_max_mb is not None else DEFAULT_MAX_MB
    if max_mb <= 0:
        raise UserError(f"--monitor-max-mb {max_mb:g} leaves no room for the request log; give a size > 0, "
                        "or --no-monitor to record nothing")
    model = resolve_model(args.model)
    recorder = None if args.no_monitor else Recorder(log_prompts=args.log_prompts, max_mb=max_mb)
    server = bind(args.host, args.port, api_key=key, allow_origins=origins,
                  response_cache=ResponseCache() if args.response_cache else None, recorder=recorder)
    try:
        engine = open_engine(model, n_ctx=args.n_ctx, threads=args.threads, device=args.device)
    except BaseException:
        if recorder:
            recorder.close()
        raise
    try:
        return serve(server, engine, model_name=args.model_name)
    finally:
        engine.close()


# ----------------------------------------------------------------------------------------------
# monitor

MONITOR_DESCRIPTION = """\
What `workbench serve` answered: request rate, latency and time to first token (p50, p95),
error rate, tokens/s, and input drift of recent requests against the model's training data
(the datasets in its lineage): the length distribution and an n-gram population stability
index (PSI; under 0.1 stable, 0.1-0.25 moderate, over 0.25 a large shift). One block per
served model. See docs/chat.md, "Monitoring what serve answers".

examples:
  workbench monitor
  workbench monitor my-model-q4 --since 15m
  workbench monitor --follow
  workbench monitor --since 2026-01-31T09:00 --json
"""


def configure_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="Only this model: the name it was served under, or its artifact id or name")
    p.add_argument("--since", default="1h", metavar="WHEN",
                   help="Requests since a duration ago (30s, 15m, 2h, 7d) or a date/time (default 1h)")
    p.add_argument("--follow", action="store_true",
                   help="Refresh every few seconds until Ctrl-C (with --json: one JSON line each time)")
    p.add_argument("--interval", type=finite_float, default=2.0, metavar="S", help="Seconds between refreshes")


def main_monitor(args: argparse.Namespace) -> int:
    import json
    import time

    from workbench import monitoring

    as_json = getattr(args, "json", False)
    monitoring.parse_since(args.since)  # a bad value is one line before anything is read
    if args.interval <= 0:
        raise UserError(f"--interval {args.interval:g}: give a number of seconds > 0")

    def current() -> dict[str, Any]:
        return monitoring.report(args.model, since=monitoring.parse_since(args.since))

    if not args.follow:
        rep = current()
        if as_json:
            sys.stdout.write(json.dumps(rep, indent=2) + "\n")
        else:
            sys.stdout.write("\n".join(monitoring.lines(rep)) + "\n")
        return 0
    try:
        if as_json or not sys.stdout.isatty():
            while True:
                rep = current()
                if as_json:
                    sys.stdout.write(json.dumps(rep) + "\n")
                else:
                    sys.stdout.write("\n".join([time.strftime("-- %H:%M:%S"), *monitoring.lines(rep)]) + "\n\n")
                sys.stdout.flush()
                time.sleep(args.interval)
        from rich.live import Live
        from rich.text import Text

        with Live(auto_refresh=False) as live:
            while True:
                live.update(Text("\n".join(monitoring.lines(current()))), refresh=True)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


chat = Command("chat", "Chat with a GGUF build or LitGPT checkpoint, offline; list, resume, export conversations",
               configure_chat, main_chat, description=CHAT_DESCRIPTION)
serve = Command("serve", "Serve a model over an OpenAI-compatible HTTP API on 127.0.0.1",
                configure_serve, main_serve, description=SERVE_DESCRIPTION)
monitor = Command("monitor", "What serve answered: rate, latency, errors, tokens/s and input drift",
                  configure_monitor, main_monitor, description=MONITOR_DESCRIPTION)
