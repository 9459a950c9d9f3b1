"""Pretraining throughput: `workbench pretrain` against LitGPT's own `litgpt pretrain`.

Both train the same model config on the same token sequences (LitGPT reads them through
`workbench_pretrain.data.TokenCacheData`), on the same device and precision, with the same
optimizer, each in its own process. Tokens/s is the steady rate after the first steps (which
pay for compilation and warm-up): the tokens of the later steps over the time they took, from
our events and from LitGPT's CSV log. MFU is model FLOPs (counted the way LitGPT counts them)
per second over the device's peak: on a GPU Lightning's datasheet figure, on a CPU the fp32
matmul rate measured here.

    python benchmarks/bench_pretrain.py                  # tiny preset on this machine
    python benchmarks/bench_pretrain.py --model 125M     # on a GPU: the 125M preset in bf16

`litgpt pretrain` always compiles the model, so ours is measured with `--compile on` (and with
`--eager` also with its CPU default, `--compile auto`, which is off for short runs). On a
shared machine the two run `--repeat` times in turn (the order swapped each round, so a busy
spell hits both alike) and the medians are compared, with the load average beside them.

A profile explains what gap remains: each loop runs twice more under cProfile, for all the
steps and for the first `--skip`, and the difference of the time its training loop (`fit`)
spends in each of its direct calls (forward, loss, backward, gradient clipping, optimizer,
data, logging) is shown per steady step side by side: compilation and warm-up, paid in the
first steps, drop out. cProfile slows Python-heavy parts most; read the parts against each
other, not as rates.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = "≥ 0.97×"
LITGPT = Path(sys.executable).parent / "litgpt"


def setup_workspace(home: Path, corpus_chars: int, vocab_size: int) -> dict[str, Any]:
    """The demo corpus and a tokenizer trained on it, made by the real stages."""
    os.environ["WORKBENCH_HOME"] = str(home)
    from workbench.testing import run_inline

    data = run_inline("data.prepare", {"demo": "pretrain", "demo_chars": corpus_chars}).artifacts("dataset")[0]
    tok = run_inline("tokenizer.train", {"dataset": data.id, "vocab_size": vocab_size}).artifacts("tokenizer")[0]
    return {"dataset": data, "tokenizer": tok}


def our_options(inputs: dict[str, Any], args: argparse.Namespace, compile_mode: str) -> dict[str, Any]:
    options = {"dataset": inputs["dataset"].id, "tokenizer": inputs["tokenizer"].id, "model": args.model,
               "max_steps": args.steps, "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
               "max_seq_length": args.seq_len, "eval_every": args.steps + 1, "checkpoint_every": args.steps + 1,
               "compile": compile_mode}
    return {**options, "precision": args.precision} if args.precision else options


def run_ours(inputs: dict[str, Any], args: argparse.Namespace, compile_mode: str) -> dict[str, float]:
    options = our_options(inputs, args, compile_mode)
    cmd = [sys.executable, "-m", "workbench.cli", "pretrain", options.pop("dataset")]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    cmd.append("--json")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"workbench pretrain failed: {out.stderr[-1500:]}")
    from workbench.events import read_events
    from workbench.store import Store

    run = Store().get_run(json.loads(out.stdout)["run_id"])
    steps = [(e["step"], e["time"]) for e in read_events(run.run_dir / "events.jsonl")
             if e["type"] == "metric" and "loss" in e["values"]]
    return {**steady_rate(steps, args.skip, args.batch_size * args.seq_len), "wall_s": wall}


def litgpt_config(inputs: dict[str, Any], args: argparse.Namespace, config: dict[str, Any], precision: str,
                  out_dir: Path) -> Path:
    """The YAML file for `litgpt pretrain --config`: the same model, data, batch and optimizer."""
    hparams = {
        "model_name": config["name"], "model_config": config, "out_dir": str(out_dir), "precision": precision,
        "tokenizer_dir": str(inputs["tokenizer"].path), "devices": 1, "num_nodes": 1, "seed": 42,
        "data": {"class_path": "workbench_pretrain.data.TokenCacheData",
                 "init_args": {"dataset_dir": str(inputs["dataset"].path), "tokenizer_dir": str(inputs["tokenizer"].path)}},
        "train": {"global_batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
                  "max_tokens": args.steps * args.batch_size * args.seq_len, "max_seq_length": args.seq_len,
                  "lr_warmup_steps": max(1, args.steps // 20), "min_lr": 3e-4, "max_norm": 1.0, "log_interval": 1,
                  "save_interval": None, "tie_embeddings": False},
        "eval": {"interval": args.steps + 1, "max_iters": 2, "initial_validation": False, "final_validation": False},
        "optimizer": {"class_path": "torch.optim.AdamW",
                      "init_args": {"lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]}},
        "logger_name": "csv",
    }
    cfg = out_dir.parent / f"{out_dir.name}.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(hparams))
    return cfg


def run_litgpt(inputs: dict[str, Any], args: argparse.Namespace, config: dict[str, Any], precision: str,
               out_dir: Path) -> dict[str, float]:
    """`litgpt pretrain --config FILE` as its own command line (it re-parses sys.argv)."""
    cfg = litgpt_config(inputs, args, config, precision, out_dir)
    t0 = time.perf_counter()
    out = subprocess.run([str(LITGPT), "pretrain", "--config", str(cfg)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"litgpt pretrain failed: {out.stderr[-1500:]}")
    (log,) = out_dir.glob("logs/csv/version_*/metrics.csv")
    with open(log) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("time")]
    # `iter` counts micro-batches; keep the rows that close an optimizer step.
    accumulation = args.batch_size // args.micro_batch_size
    steps = [(int(r["iter"]) // accumulation, float(r["time"])) for r in rows if int(r["iter"]) % accumulation == 0]
    return {**steady_rate(steps, args.skip, args.batch_size * args.seq_len), "wall_s": wall}


def steady_rate(steps: list[tuple[int, float]], skip: int, tokens_per_step: int) -> dict[str, float]:
    """Tokens/s between the end of step `skip` and the last step."""
    (s0, t0), (s1, t1) = next(x for x in steps if x[0] >= skip), steps[-1]
    return {"tokens_per_s": (s1 - s0) * tokens_per_step / (t1 - t0), "steps": s1 - s0}


def peak_flops(device: str, precision: str) -> tuple[float, str]:
    """The device's peak: Lightning's datasheet figure where it knows the GPU, else measured."""
    import torch

    if device == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        known = get_available_flops(torch.device("cuda"), dtype)
        if known:
            return float(known), "datasheet"
        return _matmul_rate(torch.device("cuda"), dtype, 8192, 10), f"measured {dtype} matmul"
    return _matmul_rate(torch.device("cpu"), torch.float32, 1024, 8), "measured fp32 matmul"


def _matmul_rate(device: Any, dtype: Any, n: int, reps: int, tries: int = 5) -> float:
    """The best of `tries` timings: a peak is what the device can do, and a neighbour's burst
    only ever slows a timing down (one taken under load once made MFU read above 1)."""
    import torch

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(tries):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


#: What each call a training loop makes is counted as, by (file, function) of the callee.
PARTS: dict[tuple[str, str], str] = {
    ("torch/nn/modules/module.py", "_wrapped_call_impl"): "forward",
    ("litgpt/utils.py", "chunked_cross_entropy"): "loss",
    ("lightning/fabric/fabric.py", "backward"): "backward",
    ("lightning/fabric/fabric.py", "clip_gradients"): "gradient clipping",
    ("lightning/fabric/wrappers.py", "step"): "optimizer step",
    ("torch/optim/lr_scheduler.py", "wrapper"): "optimizer step",  # a scheduler wraps optimizer.step
    ("torch/optim/optimizer.py", "zero_grad"): "optimizer step",
    ("torch/_compile.py", "inner"): "optimizer step",  # zero_grad, wrapped by torch.compile's guard
    ("workbench_pretrain/train.py", "validate"): "validation",
    ("litgpt/pretrain.py", "validate"): "validation",
    ("torch/utils/_contextlib.py", "decorate_context"): "validation",  # validate under @torch.no_grad
    ("workbench_pretrain/data.py", "batch"): "data",
    ("lightning/fabric/fabric.py", "to_device"): "data",
    ("litgpt/utils.py", "__next__"): "data",
    ("torch/optim/lr_scheduler.py", "step"): "learning rate",
    ("litgpt/pretrain.py", "get_lr"): "learning rate",
    ("workbench/context.py", "metric"): "events and logs",
    ("workbench/context.py", "progress"): "events and logs",
    ("lightning/fabric/fabric.py", "print"): "events and logs",
    ("lightning/fabric/fabric.py", "log_dict"): "events and logs",
    ("lightning/fabric/utilities/throughput.py", "update"): "events and logs",
    ("lightning/fabric/utilities/throughput.py", "compute"): "events and logs",
}
PART_ORDER = ["forward", "loss", "backward", "gradient clipping", "optimizer step", "learning rate", "data",
              "events and logs", "other", "fit, less validation"]


def profile_ours(inputs: dict[str, Any], args: argparse.Namespace, out: Path) -> Path:
    """Our stage in this script's own process (`inline` below), under cProfile."""
    options = json.dumps(our_options(inputs, args, "on"))
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), __file__, "inline", options],
                   capture_output=True, text=True, check=True)
    return out


def profile_litgpt(inputs: dict[str, Any], args: argparse.Namespace, config: dict[str, Any], precision: str,
                   out_dir: Path) -> Path:
    cfg = litgpt_config(inputs, args, config, precision, out_dir)
    out = out_dir.parent / f"{out_dir.name}.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(LITGPT), "pretrain", "--config", str(cfg)],
                   capture_output=True, text=True, check=True)
    return out


def steady_profile(inputs: dict[str, Any], args: argparse.Namespace, config: dict[str, Any], precision: str,
                   work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per step after the first `skip`, in each part: ours, litgpt's."""
    out: list[dict[str, float]] = []
    for who, fit_file in (("ours", "workbench_pretrain/train.py"), ("litgpt", "litgpt/pretrain.py")):
        seconds = []
        for steps in (args.steps, args.skip):
            short = argparse.Namespace(**{**vars(args), "steps": steps})
            if who == "ours":
                prof = profile_ours(inputs, short, work / f"ours-{steps}.prof")
            else:
                prof = profile_litgpt(inputs, short, config, precision, work / f"litgpt-profile-{steps}")
            seconds.append(breakdown(prof, fit_file))
        whole, first = seconds
        out.append({k: (v - first.get(k, 0.0)) * 1e3 / (args.steps - args.skip) for k, v in whole.items()})
    return out[0], out[1]


def breakdown(profile: Path, fit_file: str) -> dict[str, float]:
    """Seconds that the loop `fit` in `fit_file` spent in each part."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    fit = next(k for k in stats if k[0].endswith(fit_file) and k[2] == "fit")
    parts: dict[str, float] = {}
    for (file, _, name), (*_, callers) in stats.items():
        if fit in callers:
            part = PARTS.get((next((f for f, n in PARTS if file.endswith(f) and n == name), ""), name), "other")
            parts[part] = parts.get(part, 0.0) + callers[fit][3]
    parts["fit, less validation"] = stats[fit][3] - parts.get("validation", 0.0)
    return parts


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from workbench_pretrain.train import model_config, tokenizer_vocab, training_flops

    from workbench.hardware import choose_device, choose_precision
    from workbench.ml.checkpoint import config_to_dict

    device = choose_device("auto")
    precision = args.precision or choose_precision(device)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        inputs = setup_workspace(Path(tmp) / "home", args.corpus_chars, args.vocab_size)
        config = model_config(args.model, tokenizer_vocab(inputs["tokenizer"].path))
        config_dict = config_to_dict(config)
        config_dict["block_size"] = max(config.block_size, args.seq_len)
        flops_per_token = training_flops(config, args.micro_batch_size, args.seq_len) / (args.micro_batch_size * args.seq_len)
        peak, peak_kind = peak_flops(device, precision)

        # litgpt pretrain always compiles: the like-for-like run is ours with --compile on.
        ours: list[dict[str, float]] = []
        peer: list[dict[str, float]] = []
        loads: list[float] = []
        for i in range(args.repeat):
            pair = [lambda: ours.append(run_ours(inputs, args, "on")),
                    lambda i=i: peer.append(run_litgpt(inputs, args, config_dict, precision, Path(tmp) / f"litgpt-{i}"))]
            for run in pair if i % 2 == 0 else pair[::-1]:
                run()
                loads.append(os.getloadavg()[0])
            print(f"round {i + 1}: tokens/s ours {ours[-1]['tokens_per_s']:,.0f}, litgpt {peer[-1]['tokens_per_s']:,.0f}, "
                  f"load average {loads[-1]:.1f}", file=sys.stderr, flush=True)
        default = run_ours(inputs, args, "auto") if device == "cpu" and args.eager else None
        profiles = steady_profile(inputs, args, config_dict, precision, Path(tmp)) if args.profile else None

    def median(runs: list[dict[str, float]], key: str = "tokens_per_s") -> float:
        return statistics.median(r[key] for r in runs)

    ours_rate, peer_rate = median(ours), median(peer)
    what = f"{args.model}, {device} {precision}, {args.batch_size}×{args.seq_len} tokens/step"
    rows = [
        {"figure": f"tokens/s compiled, ours vs litgpt pretrain ({what}), median of {args.repeat}",
         "ours": ours_rate, "peer": peer_rate, "ratio": ours_rate / peer_rate, "target": TARGET},
        {"figure": f"MFU (peak {peak / 1e9:,.0f} GFLOP/s, {peak_kind})",
         "ours": ours_rate * flops_per_token / peak, "peer": peer_rate * flops_per_token / peak, "ratio": None,
         "target": None},
    ]
    if default is not None:
        rows.append({"figure": "tokens/s, ours default (--compile auto: eager for short CPU runs)",
                     "ours": default["tokens_per_s"], "peer": peer_rate, "ratio": default["tokens_per_s"] / peer_rate,
                     "target": None})
    rows.append({"figure": f"whole run, s ({args.steps} steps, process start to saved model; compiled, median)",
                 "ours": median(ours, "wall_s"), "peer": median(peer, "wall_s"),
                 "ratio": median(ours, "wall_s") / median(peer, "wall_s"), "target": None})
    rows.append({"figure": f"torch threads {torch.get_num_threads()}; steps in the rate",
                 "ours": ours[0]["steps"], "peer": peer[0]["steps"], "ratio": None, "target": None})
    if profiles is not None:
        mine, theirs = profiles
        for part in PART_ORDER:
            if part in mine or part in theirs:
                a, b = mine.get(part, 0.0), theirs.get(part, 0.0)
                rows.append({"figure": f"profile, ms per steady step: {part}", "ours": a, "peer": b,
                             "ratio": a / b if b else None, "target": None})
    def rates(runs: list[dict[str, float]]) -> str:
        return " ".join(f"{r['tokens_per_s']:,.0f}" for r in runs)

    notes = [f"every run, tokens/s: ours {rates(ours)}; litgpt {rates(peer)}",
             f"load average after each run: {' '.join(f'{x:.1f}' for x in loads)} ({os.cpu_count()} CPUs)"]
    return rows + [{"figure": note, "ours": None, "peer": None, "ratio": None, "target": None} for note in notes]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset or LitGPT config name (default: tiny, 125M on a GPU)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=None, help="steps left out of the rate (compilation, warm-up)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--corpus-chars", type=int, default=1_500_000)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3, help="measured runs of each, in turn (medians compared)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the cProfile breakdown")
    p.add_argument("--eager", action="store_true", help="also measure ours with its CPU default, --compile auto")
    args = p.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    # Defaults: the tiny preset on a CPU (a few minutes on 2 cores); the 125M preset on a GPU.
    args.model = args.model or ("125M" if gpu else "tiny")
    args.steps = args.steps or (60 if gpu else 30)
    args.skip = args.skip if args.skip is not None else (10 if gpu else 5)
    args.batch_size = args.batch_size or (32 if gpu else 16)
    args.micro_batch_size = args.micro_batch_size or 16
    args.seq_len = args.seq_len or (1024 if gpu else 256)
    return args


def rows() -> list[dict[str, Any]]:
    return measure(parse([]))


def inline(options: str) -> int:
    """Our stage run here (for cProfile), in the workspace WORKBENCH_HOME names."""
    from workbench.testing import run_inline

    run_inline("pretrain", json.loads(options))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inline"]:
        return inline(argv[1])
    table = measure(parse(argv))
    print(f"{'figure':<72} {'ours':>12} {'peer':>12} {'ratio':>7}  target")
    for r in table:
        if r["ours"] is None:
            print(r["figure"])
            continue
        cells = [f"{v:,.3f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}" if isinstance(v, (int, float)) else "-"
                 for v in (r["ours"], r["peer"], r["ratio"])]
        print(f"{r['figure']:<72} {cells[0]:>12} {cells[1]:>12} {cells[2]:>7}  {r['target'] or ''}")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    sys.exit(main())
