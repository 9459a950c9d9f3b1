"""Peak memory and step time of DPO against LoRA SFT on the same model and sequences.

Each variant trains a few steps in its own process on one Llama-style model with random weights
and random token sequences (half prompt, half answer, loss on the answer):

- sft        LoRA SFT, 2B sequences per step (cross-entropy on the answers)
- sft-half   LoRA SFT, B sequences per step
- dpo        DPO on B pairs (2B sequences), reference = the same weights with the adapter off
- dpo-ref    DPO on B pairs with a separate reference model (a second copy of the weights)

The DPO variants run the stage's own `pair_forward`. Memory is the process's peak resident set
during training minus its resident set after imports, so it counts weights, optimizer state and
activations, and leaves out the interpreter and libraries; the peak is reset after loading so the
brief copy a checkpoint load makes is not counted.

    python benchmarks/bench_dpo.py [--width 1024 --layers 8 --vocab 16384 --batch 2 --seq 128 --steps 3]
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

MODES = ("sft", "sft-half", "dpo", "dpo-ref")
DEFAULTS = {"width": 1024, "layers": 8, "vocab": 16384, "batch": 2, "seq": 128, "steps": 3}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_model(out_dir: Path, width: int, layers: int, vocab: int) -> Path:
    import torch
    import yaml
    from litgpt import GPT, Config
    from safetensors.torch import save_file

    from workbench.ml.checkpoint import config_to_dict

    config = Config(
        name="bench-llama", block_size=1024, n_layer=layers, n_embd=width, n_head=width // 64,
        n_query_groups=width // 64, vocab_size=vocab, padded_vocab_size=vocab, rotary_percentage=1.0,
        parallel_residual=False, bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
        intermediate_size=3 * width, norm_eps=1e-5,
    )
    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in GPT(config).state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "model_config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    return out_dir


def child(mode: str, model_dir: Path, batch: int, seq: int, steps: int) -> dict[str, Any]:
    """Train `steps` (+1 warm-up) steps of `mode`; returns memory and time figures."""
    import torch
    from litgpt.utils import chunked_cross_entropy
    from workbench_dpo.train import pair_forward

    from workbench.ml.checkpoint import load_model
    from workbench.ml.examples import IGNORE
    from workbench.ml.lora import LoRASettings, load_lora_model

    baseline_kib = _status_kib("VmRSS")
    settings = LoRASettings(r=8, alpha=16, dropout=0.0, targets=("query", "value"))
    model = load_lora_model(model_dir, settings).train()
    model.max_seq_length = seq
    reference = None
    if mode == "dpo-ref":
        reference = load_model(model_dir)
        reference.max_seq_length = seq
        reference.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    n_seq = batch if mode == "sft-half" else 2 * batch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n_seq, seq), generator=gen)
    if mode.startswith("dpo"):
        ids[batch:, : seq // 2] = ids[:batch, : seq // 2]  # a pair shares its prompt
    labels = ids.clone()
    labels[:, : seq // 2] = IGNORE

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if mode.startswith("dpo"):
            loss = pair_forward(model, reference, ids, labels, beta=0.1, kind="sigmoid").losses.mean()
        else:
            logits = model(ids)
            loss = chunked_cross_entropy(logits[:, :-1], labels[:, 1:])
        loss.backward()
        optimizer.step()

    precise = _reset_peak()
    step()  # warm-up: allocator pools, optimizer state
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - t0) / steps
    peak_kib = _status_kib("VmHWM") if precise else _ru_maxrss_kib()
    return {"mode": mode, "peak_mib": (peak_kib - baseline_kib) / 1024, "step_s": step_s,
            "sequences": n_seq, "precise_peak": precise}


def _ru_maxrss_kib() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss


def measure(width: int, layers: int, vocab: int, batch: int, seq: int, steps: int) -> dict[str, dict[str, Any]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model", width, layers, vocab)
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir),
                 "--batch", str(batch), "--seq", str(seq), "--steps", str(steps)],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def rows(**sizes: int) -> list[dict[str, Any]]:
    s = {**DEFAULTS, **sizes}
    r = measure(**s)
    shape = f"{s['layers']}x{s['width']}, {s['batch']} pairs = {2 * s['batch']} sequences of {s['seq']}"

    def row(figure: str, ours: float, peer: float, target: str | None) -> dict[str, Any]:
        return {"figure": figure, "ours": round(ours, 3), "peer": round(peer, 3),
                "ratio": round(ours / peer, 3), "target": target}

    return [
        row(f"peak MiB, DPO adapter-off ref / LoRA SFT on the same {2 * s['batch']} sequences ({shape})",
            r["dpo"]["peak_mib"], r["sft"]["peak_mib"], "<= 1.15"),
        row("peak MiB, DPO separate ref model / LoRA SFT on the same sequences",
            r["dpo-ref"]["peak_mib"], r["sft"]["peak_mib"], None),
        row(f"peak MiB, DPO on {s['batch']} pairs / LoRA SFT on {s['batch']} sequences",
            r["dpo"]["peak_mib"], r["sft-half"]["peak_mib"], None),
        row("step s, DPO adapter-off ref / LoRA SFT on the same sequences",
            r["dpo"]["step_s"], r["sft"]["step_s"], None),
        row("step s, DPO separate ref model / DPO adapter-off ref",
            r["dpo-ref"]["step_s"], r["dpo"]["step_s"], None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.batch, args.seq, args.steps)))
        return
    table = rows(**{k: getattr(args, k) for k in DEFAULTS})
    print(f"{'figure':<100} {'ours':>9} {'peer':>9} {'ratio':>6}  target")
    for t in table:
        print(f"{t['figure']:<100} {t['ours']:>9.3f} {t['peer']:>9.3f} {t['ratio']:>6.3f}  {t['target'] or ''}")


if __name__ == "__main__":
    main()
