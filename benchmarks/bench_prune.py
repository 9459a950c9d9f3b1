"""Structured pruning, measured: what keeping 75% of the parameters buys in llama.cpp, and costs.

- speed: a model of a pretraining preset's shape (random weights, a 384-token byte-level BPE so
  the blocks, not the output head, hold the parameters) is pruned to 75% with each method, the
  source and the pruned model are written as F32 GGUF, quantized to Q4_K_M, and timed decoding
  single tokens in llama.cpp (the models in turns, best of five rounds, all on the same thread
  count: one by default, because on a shared machine a second thread waits for a busy core
  after every op);
- cost: a micro model (4 blocks of width 64) is pretrained on the demo corpus by
  `workbench pretrain`, pruned to 75% by `workbench prune` without and with healing, and the
  held-out perplexity of each is set against the source's.

    python benchmarks/bench_prune.py [--preset 125M] [--threads N] [--heal-steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS: dict[str, Any] = {"preset": "125M", "threads": 1, "heal_steps": 100, "decode_tokens": 128}
#: (method, healing) pairs whose perplexity cost is measured on the micro model.
CASES = (("channels,heads", "none"), ("channels,heads", "lora"), ("channels,heads", "full"),
         ("blocks", "none"), ("blocks", "full"))
MICRO = """\
n_layer: 4
n_embd: 64
n_head: 4
n_query_groups: 2
intermediate_size: 256
block_size: 64
rotary_percentage: 1.0
parallel_residual: false
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
"""


def _paths() -> None:
    for p in (ROOT, ROOT / "plugins"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def _random_model(out: Path, preset: str) -> Path:
    import torch
    from litgpt import GPT, Config
    from workbench_pretrain.presets import PRESETS

    from tests.conftest import make_tokenizer
    from workbench.ml.checkpoint import save_model_dir

    tok = make_tokenizer(out.parent / "tokenizer", vocab_size=384)
    vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    config = Config(**PRESETS[preset].config(vocab))
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():  # trained-like scales: random init leaves the residual stream tiny
        for name, p in model.named_parameters():
            if "norm" not in name and p.dim() == 2:
                p.normal_(0, 0.02)
    save_model_dir(out, model.state_dict(), config, tokenizer_dir=tok, meta={"family": "llama"})
    return out


def _cut(src: Path, out: Path, method: list[str], target: float = 0.75) -> dict[str, Any]:
    import torch
    from workbench_export.families import read_config
    from workbench_prune.plan import make_plan
    from workbench_prune.prune import choose, measure_importance, prune_state_dict

    from workbench.ml.checkpoint import load_model, save_model_dir

    plan = make_plan(read_config(src), target, method)
    model = load_model(src)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (2, 128), generator=gen) for _ in range(2)]
    removal = choose(measure_importance(model, batches), plan)
    sd, config = prune_state_dict(model.state_dict(), model.config, removal)
    save_model_dir(out, sd, config, tokenizer_dir=src, meta={"family": "llama"})
    return plan.to_json()


def speed(preset: str, threads: int, decode_tokens: int) -> dict[str, Any]:
    from workbench_evaluate.tradeoff import decode_speed

    methods = {"channels,heads": ["channels", "heads"], "blocks": ["blocks"]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = _random_model(work / "source", preset)
        plans = {label: _cut(src, work / label, method) for label, method in methods.items()}
        tokens = list(range(10, 10 + decode_tokens))
        measured = decode_speed([src, *(work / label for label in methods)], tokens, threads=threads,
                                rounds=5, work_dir=work)
    out: dict[str, Any] = {"preset": preset, "source": {"q4_bytes": measured[0][0], "tokens_per_s": measured[0][1]}}
    for (label, plan), (size, tps) in zip(plans.items(), measured[1:], strict=True):
        out[label] = {"tokens_per_s": tps, "q4_bytes": size, "plan": plan}
    return out


def cost(heal_steps: int) -> dict[str, Any]:
    import torch
    from workbench_data.demo import pretrain_records

    from tests.conftest import make_tokenizer
    from workbench.context import Context
    from workbench.store import Store
    from workbench.testing import run_inline

    torch.set_num_threads(1)  # torch's threads stall on a busy core as llama.cpp's do
    docs = [r.value for r in pretrain_records(seed=0, n_chars=160_000)]
    cut = len(docs) * 9 // 10
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WORKBENCH_HOME"] = tmp
        ctx = Context(Store())
        staged = ctx.staging_dir("tokenizer")
        make_tokenizer(staged, vocab_size=384, text=" ".join(docs[:400]))
        tokenizer = ctx.register("tokenizer", staged, name="bpe").id
        staged = ctx.staging_dir("dataset")
        (staged / "card.json").write_text(json.dumps({"type": "pretrain"}))
        for split, part in (("train", docs[:cut]), ("val", docs[cut:])):
            (staged / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
        dataset = ctx.register("dataset", staged, name="demo-corpus").id
        (Path(tmp) / "micro.yaml").write_text(MICRO)
        model = run_inline("pretrain", {"dataset": dataset, "tokenizer": tokenizer, "model": str(Path(tmp) / "micro.yaml"),
                                        "max_steps": 300, "max_seq_length": 64, "batch_size": 16,
                                        "micro_batch_size": 16, "lr": 3e-3, "compile": "off"}).result["model"]
        common = {"model": model, "calibration": dataset, "target": 0.75, "max_seq_length": 64}
        out: dict[str, Any] = {}
        for method, heal in CASES:
            result = run_inline("prune", {**common, "method": method.split(","), "heal": heal,
                                          "max_steps": heal_steps}).result
            out[f"{method}/{heal}"] = {"ppl": result["perplexity"], "source_ppl": result["source_perplexity"],
                                       "kept": result["kept"]}
    return out


def rows(**sizes: Any) -> list[dict[str, Any]]:
    _paths()
    s = {**DEFAULTS, **sizes}
    return to_rows(speed(s["preset"], int(s["threads"]), int(s["decode_tokens"])), cost(int(s["heal_steps"])),
                   int(s["heal_steps"]))


def to_rows(sp: dict[str, Any], co: dict[str, Any], heal_steps: int) -> list[dict[str, Any]]:
    out = []
    base = sp["source"]["tokens_per_s"]
    for label in ("channels,heads", "blocks"):
        r = sp[label]
        out.append({"figure": f"Q4_K_M decode tok/s pruned / source, {sp['preset']} shape, 75% kept, {label} "
                              f"({r['plan']['kept']:.1%})",
                    "ours": round(r["tokens_per_s"], 1), "peer": round(base, 1),
                    "ratio": round(r["tokens_per_s"] / base, 3), "target": ">= 1.25"})
    for method, heal in CASES:
        r = co[f"{method}/{heal}"]
        what = "not healed" if heal == "none" else f"healed {heal}, {heal_steps} steps"
        out.append({"figure": f"held-out ppl pruned / source, micro model, {method} ({r['kept']:.1%}), {what}",
                    "ours": round(r["ppl"], 3), "peer": round(r["source_ppl"], 3),
                    "ratio": round(r["ppl"] / r["source_ppl"], 3), "target": None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULTS["preset"])
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    parser.add_argument("--heal-steps", type=int, default=DEFAULTS["heal_steps"])
    parser.add_argument("--decode-tokens", type=int, default=DEFAULTS["decode_tokens"])
    args = parser.parse_args()
    table = rows(preset=args.preset, threads=args.threads, heal_steps=args.heal_steps,
                 decode_tokens=args.decode_tokens)
    print(f"{'figure':<96} {'ours':>10} {'peer':>10} {'ratio':>7}  target")
    for r in table:
        print(f"{r['figure']:<96} {r['ours']!s:>10} {r['peer']!s:>10} {r['ratio']!s:>7}  {r['target'] or ''}")


if __name__ == "__main__":
    main()
