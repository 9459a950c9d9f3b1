"""`workbench demo`: from nothing to chatting with a model you trained, offline.

Each step is an ordinary run (visible afterwards in `workbench runs` and `workbench models`),
started and followed exactly as the stage commands do. A re-run reuses every step whose options
are unchanged and whose outputs still exist. The demo ends with a report — a terminal table and a
Markdown file in the workspace — giving, per stage, the metric that stage exists to improve.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError

Outputs = dict[str, dict[str, str]]  # step key -> {artifact kind: id}


@dataclass
class Step:
    key: str
    title: str
    stage: str
    options: Callable[[Outputs], dict[str, Any]]


# Sizes for the full demo (about 10 min on an idle 2-core CPU) and the quick one CI runs (about 8).
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"corpus_chars": 1_500_000, "vocab": 2048, "pretrain_steps": 800, "lora_steps": 800,
             "dpo_steps": 250, "eval_limit": 64, "lora_lr": 3e-3, "replay_windows": 2,
             "classify_steps": 60},
    "quick": {"corpus_chars": 1_000_000, "vocab": 1024, "pretrain_steps": 650, "lora_steps": 800,
              "dpo_steps": 80, "eval_limit": 48, "lora_lr": 3e-3, "replay_windows": 2,
              "classify_steps": 60},
}
# The demo's instruction and preference rows are short, so pretraining on 128-token windows
# buys twice the steps of the preset's full context for the same time.
PRETRAIN_SEQ = 128


def steps(p: dict[str, Any]) -> list[Step]:
    return [
        Step("corpus", "Pretraining corpus (standard-library docs + generated text)", "data.prepare",
             lambda o: {"demo": "pretrain", "name": "demo-corpus", "demo_chars": p["corpus_chars"]}),
        Step("tokenizer", "Byte-level BPE tokenizer", "tokenizer.train",
             lambda o: {"dataset": o["corpus"]["dataset"], "vocab_size": p["vocab"], "name": "demo-bpe"}),
        Step("pretrain", "Pretrain the tiny preset", "pretrain",
             lambda o: {"dataset": o["corpus"]["dataset"], "tokenizer": o["tokenizer"]["tokenizer"],
                        # the tiny preset's own init, named so a base pretrained otherwise is not reused
                        "model": "tiny", "init": "torch", "max_steps": p["pretrain_steps"],
                        "max_seq_length": PRETRAIN_SEQ,
                        "eval_every": max(p["pretrain_steps"] // 5, 1), "name": "demo-base"}),
        Step("instructions", "Instruction dataset", "data.prepare",
             lambda o: {"demo": "instruction", "name": "demo-instructions"}),
        Step("lora", "LoRA instruction tuning", "finetune.lora",
             lambda o: {"model": o["pretrain"]["model"], "dataset": o["instructions"]["dataset"],
                        "max_steps": p["lora_steps"], "eval_every": max(p["lora_steps"] // 3, 1),
                        "targets": ["query", "key", "value", "projection", "mlp"],
                        "lr": p["lora_lr"], "rank": 16, "alpha": 32, "batch_size": 16,
                        # pretraining text in every batch keeps the corpus perplexity near the base's
                        "replay": o["corpus"]["dataset"], "replay_windows": p["replay_windows"],
                        "name": "demo-sft"}),
        Step("preferences", "Preference dataset", "data.prepare",
             lambda o: {"demo": "preference", "name": "demo-preferences"}),
        Step("dpo", "DPO preference tuning", "dpo",
             lambda o: {"model": o["lora"]["model"], "dataset": o["preferences"]["dataset"],
                        "max_steps": p["dpo_steps"], "eval_every": max(p["dpo_steps"] // 3, 1),
                        # the same adapter shape as the LoRA step; the chosen answers' own loss keeps
                        # them ending their turn (without it the answers ran on: "lemonXavi")
                        "targets": ["query", "key", "value", "projection", "mlp"], "rank": 16, "alpha": 32,
                        "lr": 1e-3, "sft_weight": 1.0, "batch_size": 16, "replay": o["corpus"]["dataset"],
                        "replay_windows": p["replay_windows"], "name": "demo-dpo"}),
        Step("eval", "Evaluate every stage side by side", "eval",
             lambda o: {"models": [o["pretrain"]["model"], o["lora"]["model"], o["dpo"]["model"]],
                        "dataset": o["corpus"]["dataset"], "instructions": o["instructions"]["dataset"],
                        "preferences": o["preferences"]["dataset"],
                        # scoring every held-out pair costs seconds; generating answers does not
                        "limits": [f"perplexity={p['eval_limit']}"], "max_new_tokens": 16,
                        # the windows the models were trained on: a longer one would score
                        # positions no demo model has seen
                        "context": PRETRAIN_SEQ,
                        "tasks": ["perplexity", "generation", "preference"]}),
        Step("export", "Export GGUF builds (F16, Q8_0, Q4_K_M)", "export",
             lambda o: {"model": o["dpo"]["model"], "quant": ["f16", "q8_0", "q4_k_m"],
                        "eval_data": o["corpus"]["dataset"]}),
        Step("messages", "Classification dataset (spam or ham)", "data.prepare",
             lambda o: {"demo": "classification", "name": "demo-messages"}),
        Step("classify", "Classification finetuning", "finetune.classify",
             lambda o: {"model": o["pretrain"]["model"], "data": o["messages"]["dataset"],
                        "max_steps": p["classify_steps"], "eval_interval": max(p["classify_steps"] // 2, 1),
                        "train_blocks": 1, "lr": 2e-3, "batch_size": 16, "max_length": 64,
                        "name": "demo-spam"}),
    ]


#: The closing chat's questions, fixed before any run: held-out instances of three task families
#: (assets/generate.py keeps them out of every training split), so the chat shows generalisation.
CHAT_PROMPTS: tuple[tuple[str, str], ...] = (
    ("Repeat after me: green apple river", "green apple river"),
    ("Which word comes last in: stone table lemon", "lemon"),
    ("Which is bigger, 7 or 12?", "12"),
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="A shortened run (what CI runs): smaller corpus, fewer steps")
    p.add_argument("--fresh", action="store_true", help="Run every step again instead of reusing finished ones")
    p.add_argument("--tui", action="store_true", help="Watch the demo in the terminal UI")
    p.add_argument("--with-optimize", action="store_true",
                   help="After DPO, also distill the model into a smaller student and prune it to 75%%")
    p.set_defaults(handler=main)


# ----------------------------------------------------------------------------------------------


def state_path() -> Path:
    return locations.home() / "demo" / "state.json"


def log_path() -> Path:
    """Where `demo --tui` sends the output of the demo it runs in the background."""
    return locations.home() / "demo" / "demo.log"


def lock_path() -> Path:
    """Held by the running demo's driver for as long as it lives."""
    return locations.home() / "demo" / "driver.lock"


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """One demo at a time per workspace: a second would overwrite the first's state. The lock
    goes with the process, however it ends."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise UserError(f"a demo is already running in this workspace (pid {fh.read().strip() or '?'}); "
                            "watch it with `workbench demo --tui`") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def running() -> bool:
    """Whether a demo holds this workspace's lock now."""
    path = lock_path()
    if not path.exists():
        return False
    with open(path, encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def outcome() -> str | None:
    """How the last background demo ended, from its log: the report's paths (Markdown, then the
    HTML page) or its error."""
    path = log_path()
    if not path.exists():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return lines[i]
        if lines[i].startswith("report:"):
            page = next((line for line in lines[i + 1:] if line.startswith("report page:")), None)
            return lines[i] if page is None else f"{lines[i]}\n{page}"
    return None


def load_state() -> dict[str, Any]:
    path = state_path()
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def fingerprint(stage: str, options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([stage, options], sort_keys=True).encode()).hexdigest()[:16]


def reusable(entry: dict[str, Any] | None, fp: str, store: Any) -> bool:
    if not entry or entry.get("fingerprint") != fp:
        return False
    try:
        run = store.get_run(entry["run_id"])
        return run.status == "done" and all(store.find_artifact(i).path.exists() for i in entry["outputs"].values())
    except UserError:
        return False


def outputs_of(run_id: str, store: Any) -> dict[str, str]:
    """The newest artifact of each kind a run registered (the merged model over the adapter)."""
    out: dict[str, str] = {}
    for art in store.list_artifacts():
        if art.run_id == run_id:
            out[art.kind] = art.id
    return out


def run_step(step: Step, options: dict[str, Any], store: Any) -> str:
    from workbench import runs
    from workbench.cli import follow_cli

    run, proc = runs.start(step.stage, options, store)
    code = follow_cli(run, store, proc, as_json=False)
    if code != 0:
        raise UserError(f"demo step '{step.key}' ({step.stage}) ended with exit code {code}; "
                        f"see `workbench runs logs {run.id}`; re-running `workbench demo` resumes from this step")
    return run.id


def main(args: argparse.Namespace) -> int:
    if args.tui:
        return _in_tui(args)
    from rich.console import Console

    from workbench.store import Store

    con = Console(stderr=True, highlight=False)
    store = Store()
    as_json = getattr(args, "json", False)
    # With --json, stdout carries only the final summary; each step's output goes to stderr.
    with exclusive(), contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report = _run_all(args, store, con)
    if as_json:
        sys.stdout.write(json.dumps(report.summary, indent=2) + "\n")
    else:
        report.print(Console(highlight=False))
    for row in report.rows:
        if not row.ok:
            con.print(f"[yellow]warning:[/] {row.warning}; see the report")
    con.print(f"report: {report.path}", soft_wrap=True)
    con.print(f"report page: {report.html}", soft_wrap=True)
    return 0


def _run_all(args: argparse.Namespace, store: Any, con: Any) -> Any:
    profile = PROFILES["quick" if args.quick else "full"]
    state = {} if args.fresh else load_state()
    outputs: Outputs = {}
    t0 = time.monotonic()
    plan = steps(profile)
    optimize = getattr(args, "with_optimize", False)
    if optimize:
        from workbench.demo_optimize import optimize_steps

        plan += optimize_steps("quick" if args.quick else "full", store)
    for n, step in enumerate(plan, 1):
        options = step.options(outputs)
        fp = fingerprint(step.stage, options)
        con.rule(f"[bold]{n}/{len(plan) + 1} {step.title}[/]  ({step.stage})")
        if reusable(state.get(step.key), fp, store):
            outputs[step.key] = state[step.key]["outputs"]
            con.print(f"[green]✓[/] reused run {state[step.key]['run_id']} (same options, outputs intact)")
            continue
        run_id = run_step(step, options, store)
        outputs[step.key] = outputs_of(run_id, store)
        state[step.key] = {"run_id": run_id, "fingerprint": fp, "outputs": outputs[step.key]}
        save_state(state)
    con.rule(f"[bold]{len(plan) + 1}/{len(plan) + 1} Chat with the Q4_K_M build[/]")
    q4 = _gguf_of(state["export"]["run_id"], store, "q4_k_m")
    transcript = scripted_chat(q4, CHAT_PROMPTS)
    for turn in transcript:
        mark = "[green]right[/]" if turn["correct"] else f"[red]wrong[/], expected {turn['expected']}"
        con.print(f"[bold]you[/]: {turn['prompt']}\n[bold]model[/]: {turn['reply']}  ({mark}) [dim]{turn['stats']}[/]")
    from workbench.demo_optimize import optimize_rows
    from workbench.demo_report import build_report

    return build_report(outputs, state, store, transcript, minutes=(time.monotonic() - t0) / 60,
                        optimized=optimize_rows(state, store) if optimize else [])


def _gguf_of(run_id: str, store: Any, quant: str) -> Any:
    for art in store.list_artifacts("gguf"):
        if art.run_id == run_id and art.metadata.get("quant") == quant:
            return art
    raise UserError(f"the export step registered no {quant} GGUF")


def scripted_chat(gguf: Any, prompts: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """The prompts asked through the real `workbench chat --jsonl`, greedy, each in a fresh
    conversation; a reply is right when it equals the expected answer up to whitespace (the
    eval stage's exact match)."""
    requests = "".join(
        json.dumps({"type": "reset"}) + "\n" + json.dumps({"type": "user", "content": q, "temperature": 0, "max_tokens": 48}) + "\n"
        for q, _ in prompts
    )
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", gguf.id, "--jsonl"], input=requests,
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise UserError(f"the scripted chat failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    replies, current = [], ""
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event["type"] == "token":
            current += event["text"]
        elif event["type"] == "done":
            replies.append((current.strip(), event.get("stats", {})))
            current = ""
    out = []
    for (q, expected), (reply, stats) in zip(prompts, replies, strict=False):
        tps = stats.get("tokens_per_s")
        out.append({"prompt": q, "expected": expected, "reply": reply,
                    "correct": " ".join(reply.split()) == " ".join(expected.split()),
                    "stats": f"{tps:.0f} tok/s" if tps else ""})
    return out


def _in_tui(args: argparse.Namespace) -> int:
    """Run the demo in a background process and watch it in the TUI, which follows each step's
    run as it starts. Closing the TUI leaves the demo running; `demo --tui` again watches it."""
    if not running():
        log = log_path()
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "workbench.cli", "demo"] + (["--quick"] if args.quick else []) + (
            ["--fresh"] if args.fresh else []) + (["--with-optimize"] if getattr(args, "with_optimize", False) else [])
        with open(log, "wb") as fh:
            driver = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True)
        # The TUI tells the demo's end by its lock, so wait until the driver holds it.
        deadline = time.monotonic() + 30
        while not running() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if driver.poll() is not None:
            raise UserError(f"the demo did not start: {outcome() or f'exit code {driver.returncode}'}; "
                            f"see {log_path()}")
    from workbench.tui.app import BackgroundJob, WorkbenchApp

    WorkbenchApp(follow_runs=True, job=BackgroundJob("demo", running, outcome)).run()
    return 0
