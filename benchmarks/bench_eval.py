"""Evaluation throughput: perplexity scoring through llama.cpp against torch, same model, same ids.

For each pretraining preset (random weights, a byte-level BPE trained on the demo instructions),
the held-out demo instructions are tokenized once and scored with `workbench eval`'s own
perplexity code (sliding windows of the model's context, stride half of it) by

- the LitGPT checkpoint through torch (fp32, batches of 8 windows), and
- its F32, Q8_0 and Q4_K_M GGUF exports through llama-cpp-python (F32 KV cache, flash attention, one
  `llama_decode` per window with logits at the scored positions).

Both sides run on the same number of CPU threads. Throughput is scored tokens per second (each
token is scored once; windows overlap by half, so each is also read as context once more). On
a shared machine each engine is measured `--repeat` times, in turn with the others so that load
hits all alike, and the medians are compared; the load average is printed with them.

    python benchmarks/bench_eval.py [--presets tiny,small] [--tokens 16384] [--vocab 2048] [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "data"
QUANTS = ("q8_0", "q4_k_m")
GGUFS = ("f32", *QUANTS)
DEFAULTS: dict[str, Any] = {"presets": "tiny,small", "tokens": 16384, "vocab": 2048, "threads": 1, "repeat": 3}


def _paths() -> None:
    for p in (ROOT, ROOT / "plugins"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def demo_texts() -> list[str]:
    from workbench.prompts import get_style

    style = get_style("chatml")
    texts = []
    for split in ("val", "train"):
        with open(DEMO / f"instruction.{split}.jsonl", encoding="utf-8") as fh:
            texts += [style.render(json.loads(line)["messages"], add_generation_prompt=False) for line in fh]
    return texts


def make_tokenizer(out: Path, texts: list[str], vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "add_bos_token": False}))
    eos = tok.token_to_id("<|endoftext|>")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))
    return out


def make_model(out: Path, tok_dir: Path, preset: str) -> tuple[Path, int]:
    import torch
    from litgpt import GPT, Config
    from workbench_pretrain.presets import PRESETS

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    vocab = json.loads((tok_dir / "tokenizer.json").read_text())
    size = len(vocab["model"]["vocab"]) + sum(1 for t in vocab["added_tokens"] if t["content"] not in vocab["model"]["vocab"])
    config = Config(**PRESETS[preset].config(size))
    torch.manual_seed(0)
    model = GPT(config)
    n_params = sum(p.numel() for p in model.parameters())
    save_model_dir(out, model.state_dict(), config, tokenizer_dir=tok_dir,
                   meta={"prompt_style": get_style("chatml").to_json(), "family": "llama", "eos_token": "<|endoftext|>"})
    return out, n_params


def _score(backend: Any, ids: Any, threads: int) -> dict[str, float]:
    from workbench_evaluate.tasks import Subject, perplexity

    from workbench.prompts import get_style

    subject = Subject("bench", "bench", backend, None, get_style("chatml"), set(), [])
    context = backend.context
    t0 = time.perf_counter()
    result = perplexity(subject, ids, 0, context, context // 2, lambda n: None)
    seconds = time.perf_counter() - t0
    backend.close()
    return {"ppl": result.metrics["perplexity"], "tokens": result.details["tokens_scored"], "seconds": seconds,
            "tokens_per_s": result.details["tokens_scored"] / seconds}


def measure_preset(preset: str, work: Path, tok_dir: Path, stream: Any, threads: int, repeat: int) -> dict[str, Any]:
    from workbench_evaluate.backends import LlamaBackend, TorchBackend
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    model_dir, n_params = make_model(work / preset, tok_dir, preset)
    f32 = work / f"{preset}-f32.gguf"
    write_gguf(model_dir, f32, "f32")
    quantized = {}
    for kind in QUANTS:
        quantized[kind] = work / f"{preset}-{kind}.gguf"
        quantize(f32, quantized[kind], kind)
    engines = {
        "torch": lambda: TorchBackend(model_dir, context=None, device="cpu", precision="32-true", batch_size=8,
                                      threads=threads),
        "f32": lambda: LlamaBackend(f32, context=None, device="cpu", threads=threads),
        **{kind: lambda path=path: LlamaBackend(path, context=None, device="cpu", threads=threads)
           for kind, path in quantized.items()},
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for _ in range(repeat):  # in turn, so that a busy spell on a shared machine hits every engine
        for name, make in engines.items():
            runs[name].append(_score(make(), stream, threads))
    out: dict[str, Any] = {"preset": preset, "params": n_params, "threads": threads, "repeat": repeat}
    for name, scored in runs.items():
        speeds = sorted(r["tokens_per_s"] for r in scored)
        out[name] = {**scored[0], "tokens_per_s": statistics.median(speeds),
                     "seconds": statistics.median(r["seconds"] for r in scored), "all": speeds}
    out["load"] = os.getloadavg()[0]
    return out


def measure(presets: str, tokens: int, vocab: int, threads: int | None, repeat: int = 1) -> list[dict[str, Any]]:
    _paths()
    import numpy as np
    from tokenizers import Tokenizer

    threads = threads or os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        texts = demo_texts()
        tok_dir = make_tokenizer(work / "tokenizer", texts, vocab)
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        eos = tok.token_to_id("<|endoftext|>")
        ids: list[int] = []
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            ids += [*enc.ids, eos]
            if len(ids) >= tokens:
                break
        stream = np.asarray(ids[:tokens], dtype=np.int64)
        for preset in presets.split(","):
            print(f"measuring {preset} …", file=sys.stderr, flush=True)
            results.append(measure_preset(preset.strip(), work, tok_dir, stream, threads, repeat))
    return results


def to_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        label = f"{r['preset']} preset ({r['params'] / 1e6:.1f}M params, {r['threads']} threads)"
        if r.get("repeat", 1) > 1:
            label += f", median of {r['repeat']}"
        t = r["torch"]
        for name in GGUFS:
            q = r[name]
            out.append({"figure": f"perplexity tokens/s, llama.cpp {name.upper()} vs torch fp32, {label}",
                        "ours": round(q["tokens_per_s"]), "peer": round(t["tokens_per_s"]),
                        "ratio": round(q["tokens_per_s"] / t["tokens_per_s"], 2), "target": None})
        out.append({"figure": f"perplexity llama.cpp F32 / torch, {label}", "ours": round(r["f32"]["ppl"], 4),
                    "peer": round(t["ppl"], 4), "ratio": round(r["f32"]["ppl"] / t["ppl"], 6), "target": "within 0.5%"})
        for name in QUANTS:
            out.append({"figure": f"perplexity llama.cpp {name.upper()} / torch, {label}",
                        "ours": round(r[name]["ppl"], 4), "peer": round(t["ppl"], 4),
                        "ratio": round(r[name]["ppl"] / t["ppl"], 6), "target": None})
    return out


def rows(**sizes: Any) -> list[dict[str, Any]]:
    s = {**DEFAULTS, **sizes}
    return to_rows(measure(s["presets"], int(s["tokens"]), int(s["vocab"]), s["threads"], int(s["repeat"])))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--presets", default=DEFAULTS["presets"])
    parser.add_argument("--tokens", type=int, default=DEFAULTS["tokens"])
    parser.add_argument("--vocab", type=int, default=DEFAULTS["vocab"])
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    parser.add_argument("--repeat", type=int, default=DEFAULTS["repeat"], help="measurements per engine (median)")
    args = parser.parse_args()
    results = measure(args.presets, args.tokens, args.vocab, args.threads, args.repeat)
    print(f"{'figure':<78} {'ours':>10} {'peer':>10} {'ratio':>9}  target")
    for r in to_rows(results):
        print(f"{r['figure']:<78} {r['ours']!s:>10} {r['peer']!s:>10} {r['ratio']!s:>9}  {r['target'] or ''}")
    for r in results:
        secs = ", ".join(f"{k} {r[k]['seconds']:.1f} s" for k in ("torch", *GGUFS))
        speeds = "; ".join(f"{k} " + " ".join(f"{v:.0f}" for v in r[k]["all"]) for k in ("torch", *GGUFS))
        print(f"{r['preset']}: {r['torch']['tokens']:,} tokens scored; median {secs}; "
              f"load average {r['load']:.1f}; every run (tokens/s): {speeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
