"""Evaluation throughput: perplexity scoring through llama.cpp against torch, same model, same ids.

For each pretraining preset (random weights, a byte-level BPE trained on the demo instructions),
the held-out demo instructions are tokenized once and scored with `workbench eval`'s own
perplexity code (sliding windows of the model's context, stride half of it) by

- the LitGPT checkpoint through torch (fp32, batches of 8 windows), and
- its F32, Q8_0 and Q4_K_M GGUF exports through llama-cpp-python (F32 KV cache, flash attention,
  one `llama_decode` per window with logits at the scored positions).

Both sides run on the same number of CPU threads. Throughput is scored tokens per second (each
token is scored once; windows overlap by half, so each is also read as context once more). On
a shared machine each engine is measured `--repeat` times, in turn with the others so that load
hits all alike, and the medians are compared; the load average is printed with them, and so is
the rate per second of CPU time the process used, which other processes' load disturbs less.

    python benchmarks/bench_eval.py [--presets tiny,small] [--tokens 16384] [--vocab 2048] [--threads N] [--repeat 3]

`--gemm` times the kernels alone instead: one matrix product of each of the presets' weight
shapes, with a window's rows of activations, in ggml (the library under llama.cpp, called
through ctypes on llama-cpp-python's own build) at F32 and Q8_0 and in torch, on one thread.
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
    t0, c0 = time.perf_counter(), time.process_time()
    result = perplexity(subject, ids, 0, context, context // 2, lambda n: None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    backend.close()
    tokens = result.details["tokens_scored"]
    return {"ppl": result.metrics["perplexity"], "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu}


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
                     "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in scored),
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


# (preset, weight, input features, output features, rows: one window's tokens)
GEMM_SHAPES = [
    ("tiny", "attn_q", 256, 256, 256), ("tiny", "attn_k/v", 256, 128, 256), ("tiny", "ffn_gate/up", 256, 768, 256),
    ("tiny", "ffn_down", 768, 256, 256), ("tiny", "output", 256, 2048, 256), ("tiny", "ffn_gate/up x8", 256, 768, 2048),
    ("small", "attn_q", 512, 512, 512), ("small", "attn_k/v", 512, 128, 512), ("small", "ffn_gate/up", 512, 1536, 512),
    ("small", "ffn_down", 1536, 512, 512), ("small", "output", 512, 2048, 512),
]


class _Ggml:
    """The few ggml calls a timed matrix product needs, from llama-cpp-python's own libraries."""

    F32, Q8_0 = 0, 8

    def __init__(self) -> None:
        import ctypes

        import llama_cpp

        lib = Path(llama_cpp.__file__).parent / "lib"
        self.ct = ctypes
        self.base = ctypes.CDLL(str(lib / "libggml-base.so"))
        self.cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))

        class InitParams(ctypes.Structure):
            _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

        self.InitParams = InitParams
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        for name, res, args in (("ggml_init", p, [InitParams]), ("ggml_new_tensor_2d", p, [p, ctypes.c_int, i64, i64]),
                                ("ggml_mul_mat", p, [p, p, p]), ("ggml_new_graph", p, [p]),
                                ("ggml_build_forward_expand", None, [p, p]), ("ggml_get_data", p, [p]),
                                ("ggml_free", None, [p]),
                                ("ggml_quantize_chunk", ctypes.c_size_t, [ctypes.c_int, p, p, i64, i64, i64, p])):
            fn = getattr(self.base, name)
            fn.restype, fn.argtypes = res, args
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [p, p, ctypes.c_int]
        self.cpu.ggml_cpu_init()

    def seconds(self, weight: Any, x: Any, kind: int, repeat: int) -> float:
        """Median CPU seconds of weight @ x.T (weight quantized to `kind` first), one thread."""
        out_f, in_f = weight.shape
        ctx = self.base.ggml_init(self.InitParams(weight.nbytes + 4 * x.nbytes + 4 * out_f * len(x) + (64 << 20), None,
                                                  False))
        try:
            w = self.base.ggml_new_tensor_2d(ctx, kind, in_f, out_f)
            if kind == self.F32:
                self.ct.memmove(self.base.ggml_get_data(w), weight.ctypes.data, weight.nbytes)
            else:
                self.base.ggml_quantize_chunk(kind, weight.ctypes.data, self.base.ggml_get_data(w), 0, out_f, in_f, None)
            a = self.base.ggml_new_tensor_2d(ctx, self.F32, in_f, len(x))
            self.ct.memmove(self.base.ggml_get_data(a), x.ctypes.data, x.nbytes)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, self.base.ggml_mul_mat(ctx, w, a))
            return _median_seconds(lambda: self.cpu.ggml_graph_compute_with_ctx(ctx, graph, 1), repeat)
        finally:
            self.base.ggml_free(ctx)


def _median_seconds(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def gemm(repeat: int = 30) -> list[dict[str, Any]]:
    """GFLOP/s of one matrix product per weight shape: torch fp32 against ggml F32 and Q8_0."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    ggml = _Ggml()
    rng = np.random.default_rng(0)
    out = []
    for preset, name, in_f, out_f, n in GEMM_SHAPES:
        weight = rng.standard_normal((out_f, in_f), dtype=np.float32)
        x = rng.standard_normal((n, in_f), dtype=np.float32)
        tw, tx = torch.from_numpy(weight), torch.from_numpy(x)
        flop = 2 * in_f * out_f * n / 1e9
        out.append({"preset": preset, "weight": name, "shape": f"{n}x{in_f} @ {in_f}x{out_f}",
                    "torch": flop / _median_seconds(lambda tw=tw, tx=tx: torch.nn.functional.linear(tx, tw), repeat),
                    "f32": flop / ggml.seconds(weight, x, ggml.F32, repeat),
                    "q8_0": flop / ggml.seconds(weight, x, ggml.Q8_0, repeat)})
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
    parser.add_argument("--gemm", action="store_true", help="time one matrix product per weight shape instead")
    args = parser.parse_args()
    if args.gemm:
        _paths()
        print(f"GFLOP/s of one matrix product, one thread, median CPU time; load average {os.getloadavg()[0]:.1f}")
        print(f"{'preset':<6} {'weight':<15} {'shape':<22} {'torch fp32':>10} {'ggml F32':>9} {'ggml Q8_0':>9}")
        for g in gemm():
            print(f"{g['preset']:<6} {g['weight']:<15} {g['shape']:<22} {g['torch']:>10.1f} "
                  f"{g['f32']:>9.1f} ({g['f32'] / g['torch']:.2f}x) {g['q8_0']:>9.1f} ({g['q8_0'] / g['torch']:.2f}x)")
        return 0
    results = measure(args.presets, args.tokens, args.vocab, args.threads, args.repeat)
    print(f"{'figure':<78} {'ours':>10} {'peer':>10} {'ratio':>9}  target")
    for r in to_rows(results):
        print(f"{r['figure']:<78} {r['ours']!s:>10} {r['peer']!s:>10} {r['ratio']!s:>9}  {r['target'] or ''}")
    for r in results:
        secs = ", ".join(f"{k} {r[k]['seconds']:.1f} s" for k in ("torch", *GGUFS))
        speeds = "; ".join(f"{k} " + " ".join(f"{v:.0f}" for v in r[k]["all"]) for k in ("torch", *GGUFS))
        cpu = ", ".join(f"{k} {r[k]['tokens_per_cpu_s']:.0f} ({r[k]['tokens_per_cpu_s'] / r['torch']['tokens_per_cpu_s']:.2f}x)"
                        for k in ("torch", *GGUFS))
        print(f"{r['preset']}: {r['torch']['tokens']:,} tokens scored; median {secs}; "
              f"load average {r['load']:.1f}; every run (tokens/s): {speeds}; "
              f"median tokens per CPU second: {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
