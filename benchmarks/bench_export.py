"""GGUF export, measured.

- time and peak memory of the native writer (`write_gguf`, F16) for the pretraining presets with
  random weights and a 32k-token vocabulary, peak memory set against the model's size; and of
  the whole `workbench export` (F32 reference, F16 and Q4_K_M files, verification in llama.cpp)
  for the smaller presets;
- perplexity and size of every quantization type, on a `tiny`-preset model trained briefly on the
  demo instructions, perplexity taken by llama.cpp on the held-out split.

    python benchmarks/bench_export.py [--presets tiny,small,125M] [--full-presets tiny]
                                      [--train-steps 60]

Memory is measured in child processes: the peak resident set (VmHWM) minus the resident set
after the imports, so torch and llama.cpp themselves are not counted. File-backed pages of the
memory-mapped weights count, as they do for the user.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "data"
QUANTS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")
DEFAULTS = {"presets": "tiny,small,125M", "full_presets": "tiny", "train_steps": 60}
MiB = 2**20


def _paths() -> None:
    for p in (ROOT, ROOT / "plugins"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


# -- model making -------------------------------------------------------------------------------


def demo_texts(split: str) -> list[str]:
    _paths()
    from workbench.prompts import get_style

    style = get_style("chatml")
    with open(DEMO / f"instruction.{split}.jsonl", encoding="utf-8") as fh:
        return [style.render(json.loads(line)["messages"], add_generation_prompt=False) for line in fh]


def make_tokenizer(out: Path) -> Path:
    """The byte-level BPE the tokenizer stage trains, on the demo instructions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(demo_texts("train"), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "add_bos_token": False}))
    return out


def make_model(out: Path, tok_dir: Path, preset: str, vocab: int, state_dict: Any = None) -> Path:
    import torch
    from litgpt import GPT, Config
    from workbench_pretrain.presets import PRESETS

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    config = Config(**PRESETS[preset].config(vocab))
    if state_dict is None:
        torch.manual_seed(0)
        with torch.device("cpu"):
            state_dict = GPT(config).state_dict()
    save_model_dir(out, state_dict, config, tokenizer_dir=tok_dir,
                   meta={"prompt_style": get_style("chatml").to_json(), "family": "llama", "eos_token": "<|im_end|>"})
    return out


def train_tiny(work: Path, tok_dir: Path, steps: int) -> tuple[Path, float]:
    """A `tiny`-preset model trained on the demo instructions, so perplexities mean something."""
    import torch
    import torch.nn.functional as F
    from litgpt import GPT, Config
    from tokenizers import Tokenizer
    from workbench_pretrain.presets import PRESETS

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    stream = [i for text in demo_texts("train") for i in tok.encode(text).ids]
    config = Config(**PRESETS["tiny"].config(tok.get_vocab_size()))
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = random.Random(0)
    seq, batch = 128, 8
    t0 = time.perf_counter()
    for _ in range(steps):
        starts = [rng.randrange(len(stream) - seq - 1) for _ in range(batch)]
        xy = torch.tensor([stream[s:s + seq + 1] for s in starts])
        logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model_dir = make_model(work / "trained", tok_dir, "tiny", tok.get_vocab_size(), model.state_dict())
    return model_dir, time.perf_counter() - t0


# -- children -------------------------------------------------------------------------------------


def child_write(model_dir: Path, out: Path) -> dict[str, Any]:
    from workbench_export.gguf_writer import write_gguf

    baseline = _status("VmRSS")
    info = write_gguf(model_dir, out, "f16")
    return {"seconds": info["seconds"], "peak_mib": (_status("VmHWM") - baseline) / MiB,
            "size_mib": info["size_bytes"] / MiB, "params": info["n_params"]}


def child_export(model_dir: Path, home: Path) -> dict[str, Any]:
    os.environ["WORKBENCH_HOME"] = str(home)
    import shutil

    import llama_cpp  # noqa: F401 - counted in the baseline, like torch
    import workbench_export.pipeline  # noqa: F401

    from workbench.context import Context
    from workbench.store import Store
    from workbench.testing import run_inline

    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model_dir, staged)
    model_id = ctx.register("model", staged, name="bench").id
    baseline = _status("VmRSS")
    t0 = time.perf_counter()
    run_inline("export", {"model": model_id, "quant": "f16,q4_k_m"})
    return {"seconds": time.perf_counter() - t0, "peak_mib": (_status("VmHWM") - baseline) / MiB}


def in_child(mode: str, **kwargs: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- measurements ---------------------------------------------------------------------------------


def measure_presets(work: Path, tok_dir: Path, presets: list[str], full: list[str]) -> list[dict[str, Any]]:
    from workbench_pretrain.presets import REFERENCE_VOCAB

    out = []
    for name in presets:
        model_dir = make_model(work / f"preset-{name}", tok_dir, name, REFERENCE_VOCAB)
        model_mib = (model_dir / "model.safetensors").stat().st_size / MiB
        write = in_child("write", model_dir=str(model_dir), out=str(work / f"{name}-f16.gguf"))
        (work / f"{name}-f16.gguf").unlink()
        row = {"preset": name, "params": write["params"], "model_mib": model_mib, "write": write}
        if name in full:
            row["export"] = in_child("export", model_dir=str(model_dir), home=str(work / f"home-{name}"))
        out.append(row)
    return out


def measure_quants(work: Path, tok_dir: Path, steps: int) -> dict[str, Any]:
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize
    from workbench_export.verify import Reference, verify_gguf

    model_dir, train_s = train_tiny(work, tok_dir, steps)
    f32 = work / "trained-f32.gguf"
    info = write_gguf(model_dir, f32, "f32")
    heldout = "".join(demo_texts("val"))
    ref = Reference.build(model_dir, heldout_text=heldout, max_ppl_tokens=4096, n_greedy=4)
    table = {}
    for qtype in ("f32", "f16", "bf16", *QUANTS):
        path = work / f"trained-{qtype}.gguf"
        t0 = time.perf_counter()
        if qtype in ("f16", "bf16"):
            write_gguf(model_dir, path, qtype)
            fallbacks = 0
        elif qtype != "f32":
            fallbacks = len(quantize(f32, path, qtype)["fallbacks"])
        else:
            fallbacks = 0
        seconds = time.perf_counter() - t0
        check = verify_gguf(path, ref, exact=qtype == "f32", max_ppl_increase=10.0)
        size = path.stat().st_size
        table[qtype] = {"size_mib": size / MiB, "bits_per_weight": 8 * size / info["n_params"], "ppl": check.ppl,
                        "ppl_increase": check.ppl_increase, "top1": check.top1_agreement, "seconds": seconds,
                        "fallbacks": fallbacks, "passed": check.passed}
    return {"ref_ppl": ref.ref_ppl, "train_s": train_s, "steps": steps, "n_params": info["n_params"], "quants": table}


def _measure(presets: str, full_presets: str, train_steps: int) -> dict[str, Any]:
    _paths()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        tok_dir = make_tokenizer(work / "tokenizer")
        return {
            "presets": measure_presets(work, tok_dir, [p for p in presets.split(",") if p],
                                       [p for p in full_presets.split(",") if p]),
            "quants": measure_quants(work, tok_dir, train_steps),
        }


def rows(**sizes: Any) -> list[dict[str, Any]]:
    s = {**DEFAULTS, **sizes}
    return to_rows(_measure(s["presets"], s["full_presets"], int(s["train_steps"])))


def to_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in m["presets"]:
        label = f"{p['preset']} preset ({p['params'] / 1e6:.1f}M params, 32k vocab)"
        out.append({"figure": f"write_gguf F16 seconds, {label}", "ours": round(p["write"]["seconds"], 2),
                    "peer": None, "ratio": None, "target": None})
        out.append({"figure": f"write_gguf peak MiB above baseline / F32 model MiB, {label}",
                    "ours": round(p["write"]["peak_mib"], 1), "peer": round(p["model_mib"], 1),
                    "ratio": round(p["write"]["peak_mib"] / p["model_mib"], 3), "target": "<= 1.1"})
        if "export" in p:
            out.append({"figure": f"whole export (F32 ref, F16, Q4_K_M, verified) seconds, {label}",
                        "ours": round(p["export"]["seconds"], 1), "peer": None, "ratio": None, "target": None})
            out.append({"figure": f"whole export peak MiB above baseline / F32 model MiB, {label}",
                        "ours": round(p["export"]["peak_mib"], 1), "peer": round(p["model_mib"], 1),
                        "ratio": round(p["export"]["peak_mib"] / p["model_mib"], 3), "target": None})
    q = m["quants"]
    f32 = q["quants"]["f32"]
    for qtype, r in q["quants"].items():
        out.append({"figure": f"perplexity {qtype} / LitGPT, trained tiny preset ({r['bits_per_weight']:.2f} bits/weight)",
                    "ours": round(r["ppl"], 4), "peer": round(q["ref_ppl"], 4),
                    "ratio": round(r["ppl"] / q["ref_ppl"], 4), "target": "<= 1.0001" if qtype == "f32" else None})
        out.append({"figure": f"size MiB {qtype} / F32", "ours": round(r["size_mib"], 3),
                    "peer": round(f32["size_mib"], 3), "ratio": round(r["size_mib"] / f32["size_mib"], 3),
                    "target": None})
    return out


def print_tables(m: dict[str, Any]) -> None:
    print("\nExport time and memory (F16 writer; whole export = F32 reference + F16 + Q4_K_M, verified)")
    print(f"{'preset':<7} {'params':>8} {'F32 MiB':>8} {'write s':>8} {'write peak MiB':>15} {'peak/model':>10}"
          f" {'export s':>9} {'export peak MiB':>16}")
    for p in m["presets"]:
        e = p.get("export")
        export_s = f"{e['seconds']:.1f}" if e else "-"
        export_peak = f"{e['peak_mib']:.1f}" if e else "-"
        print(f"{p['preset']:<7} {p['params'] / 1e6:>7.1f}M {p['model_mib']:>8.1f} {p['write']['seconds']:>8.2f}"
              f" {p['write']['peak_mib']:>15.1f} {p['write']['peak_mib'] / p['model_mib']:>10.2f}"
              f" {export_s:>9} {export_peak:>16}")
    q = m["quants"]
    print(f"\nQuantization, tiny preset ({q['n_params'] / 1e6:.2f}M params) trained {q['steps']} steps "
          f"({q['train_s']:.0f} s); LitGPT perplexity on the held-out demo split: {q['ref_ppl']:.4f}")
    print(f"{'type':<8} {'MiB':>7} {'bits/w':>7} {'perplexity':>11} {'Δppl':>8} {'top-1 agree':>11} {'fallbacks':>9} {'s':>6}")
    for qtype, r in q["quants"].items():
        print(f"{qtype:<8} {r['size_mib']:>7.3f} {r['bits_per_weight']:>7.2f} {r['ppl']:>11.4f}"
              f" {100 * r['ppl_increase']:>+7.2f}% {r['top1']:>11.3f} {r['fallbacks']:>9} {r['seconds']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=DEFAULTS["presets"], help="presets whose F16 write is measured")
    parser.add_argument("--full-presets", default=DEFAULTS["full_presets"],
                        help="presets whose whole verified export is measured")
    parser.add_argument("--train-steps", type=int, default=DEFAULTS["train_steps"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _paths()
        result = child_write(args.model_dir, args.out) if args.child == "write" else child_export(args.model_dir, args.home)
        print(json.dumps(result))
        return
    m = _measure(args.presets, args.full_presets, args.train_steps)
    print_tables(m)
    print()
    for r in to_rows(m):
        print(r)


if __name__ == "__main__":
    main()
