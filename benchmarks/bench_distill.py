"""Step time and peak memory of a distillation step against a LoRA step and a plain full-finetune
step of the same student, on the same sequences.

Each variant trains a few steps in its own process on one Llama-style student with random weights
and random token sequences:

- distill    full training on the stage's own loss (`distill_loss`): T²·KL to cached teacher
             top-k logits (float16 values, int32 ids, as the cache stores them) plus cross-entropy
- full       full training on cross-entropy alone (what `kd_weight 0` costs, and plain finetuning)
- lora       LoRA (r=8 on query and value) on cross-entropy alone

Step time is the fastest of the timed steps, on the CPU cores other processes leave idle.

The teacher is not run: a distillation step reads its logits from the cache, so its cost is the
student's. Memory is the process's peak resident set during training minus its resident set after
imports and loading (weights, optimizer state, activations, the KL's extra logits).

    python benchmarks/bench_distill.py [--width 512 --layers 4 --vocab 8192 --batch 4 --seq 256 --steps 5 --top-k 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_dpo import _reset_peak, _ru_maxrss_kib, _status_kib, make_model  # noqa: E402

MODES = ("distill", "full", "lora")
DEFAULTS = {"width": 512, "layers": 4, "vocab": 8192, "batch": 4, "seq": 256, "steps": 5, "top_k": 32}


def child(mode: str, model_dir: Path, batch: int, seq: int, steps: int, top_k: int) -> dict[str, Any]:
    """Train `steps` (+1 warm-up) steps of `mode`; returns memory and time figures."""
    import torch
    import torch.nn.functional as F
    from workbench_distill.loss import distill_loss

    from workbench.hardware import free_cores
    from workbench.ml.checkpoint import load_model
    from workbench.ml.lora import LoRASettings, load_lora_model

    if mode == "lora":
        model = load_lora_model(model_dir, LoRASettings(r=8, alpha=16, dropout=0.0, targets=("query", "value")))
    else:
        model = load_model(model_dir).requires_grad_(True)
    model.train()
    model.max_seq_length = seq
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    teacher = torch.randn(batch, seq, vocab, generator=gen).topk(top_k, dim=-1)
    values, indices = teacher.values.half(), teacher.indices.int()
    del teacher
    baseline_kib = _status_kib("VmRSS")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids[:, :-1])
        if mode == "distill":
            loss = distill_loss(logits, ids[:, 1:], values, indices, temperature=2.0, kd_weight=0.5).loss
        else:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()

    # On a CPU, only the cores other processes leave idle: one busy core stalls every torch thread.
    torch.set_num_threads(free_cores() if not torch.cuda.is_available() else torch.get_num_threads())
    precise = _reset_peak()
    step()  # warm-up: allocator pools, optimizer state
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = min(times)  # the least disturbed step: other processes only ever add time
    peak_kib = _status_kib("VmHWM") if precise else _ru_maxrss_kib()
    return {"mode": mode, "peak_mib": (peak_kib - baseline_kib) / 1024, "step_s": step_s}


def measure(width: int, layers: int, vocab: int, batch: int, seq: int, steps: int, top_k: int) -> dict[str, dict[str, Any]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model", width, layers, vocab)
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir), "--batch", str(batch),
                 "--seq", str(seq), "--steps", str(steps), "--top-k", str(top_k)],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def rows(**sizes: int) -> list[dict[str, Any]]:
    s = {**DEFAULTS, **sizes}
    r = measure(**s)
    shape = f"{s['layers']}x{s['width']}, vocab {s['vocab']}, {s['batch']}x{s['seq']} tokens, top-{s['top_k']}"

    def row(figure: str, ours: float, peer: float, target: str | None = None) -> dict[str, Any]:
        return {"figure": figure, "ours": round(ours, 3), "peer": round(peer, 3),
                "ratio": round(ours / peer, 3), "target": target}

    return [
        row(f"step s, distill / full finetune (CE) ({shape})", r["distill"]["step_s"], r["full"]["step_s"]),
        row("step s, distill / LoRA r=8 q,v (CE)", r["distill"]["step_s"], r["lora"]["step_s"]),
        row("peak MiB, distill / full finetune (CE)", r["distill"]["peak_mib"], r["full"]["peak_mib"]),
        row("peak MiB, distill / LoRA r=8 q,v (CE)", r["distill"]["peak_mib"], r["lora"]["peak_mib"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.batch, args.seq, args.steps, args.top_k)))
        return
    table = rows(**{k: getattr(args, k) for k in DEFAULTS})
    print(f"{'figure':<90} {'ours':>9} {'peer':>9} {'ratio':>6}  target")
    for t in table:
        print(f"{t['figure']:<90} {t['ours']:>9.3f} {t['peer']:>9.3f} {t['ratio']:>6.3f}  {t['target'] or ''}")


if __name__ == "__main__":
    main()
