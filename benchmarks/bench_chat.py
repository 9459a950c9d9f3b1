"""Chat speed: llama.cpp (F16 and Q4_K_M GGUF) against LitGPT's torch generation of one model,
and what the KV cache reuse and the response cache save.

One Llama-style model with random weights (width 512, 4 layers, vocabulary 8192 by default: row
lengths are multiples of 256, so Q4_K_M quantizes every matrix as asked) is saved as a LitGPT
checkpoint, exported with `workbench_export.gguf_writer` and quantized with
`workbench_export.quantize`. Both sides use the same number of CPU threads.

- decode tokens/s: greedy, a fixed number of new tokens after a short chat prompt; the rate after
  the first token, so prompt processing is not counted. The peer is LitGPT's own
  `litgpt.generate.base.generate_fn` with its KV cache, in fp32 (what `workbench doctor` picks on a
  CPU). Our torch engine is measured against the same peer. Each rate is also given per CPU-second
  of the process, which holds up on a machine shared with other work (use `--threads 1` there:
  with one thread it is the generating thread's own time).
- time to first token on turn 5 of a conversation (llama.cpp F16), with the KV cache kept across
  turns (only the new tokens run) and with it dropped before each turn (the whole history runs).
- a temperature-0 request served from the response cache against the same request generated.
- decode on a busy machine: another process keeps one core busy, or runs torch matrix products
  on every core (like a training run), while Q4_K_M decodes with the threads our engine picks
  before each reply, and with every core (what llama.cpp does unless told otherwise).

    python benchmarks/bench_chat.py [--width 512 --layers 4 --vocab 8192 --tokens 128 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULTS = {"width": 512, "layers": 4, "vocab": 8192, "tokens": 128, "repeats": 3, "threads": 0}
TEXT = (
    "The quick brown fox jumps over the lazy dog. Local models answer questions, summarise notes "
    "and write code without a network. Don't stop; it's fine, isn't it? 12345 + 678 = 13023.\n"
)
QUESTION = "Tell me, in a few sentences, why a model that runs on this machine keeps my notes private."


def build_model(root: Path, width: int, layers: int, vocab: int) -> Path:
    """A random Llama-style LitGPT checkpoint with a byte-level BPE tokenizer and ChatML style."""
    import torch
    from litgpt import GPT, Config
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT, QUESTION] * 50, trainer=trainer)
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "add_bos_token": False}))
    eos = tok.token_to_id("<|endoftext|>")
    (tok_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))

    heads = max(1, width // 64)
    config = Config(name="bench-llama", block_size=2048, n_layer=layers, n_embd=width, n_head=heads,
                    n_query_groups=heads, vocab_size=tok.get_vocab_size(), padded_vocab_size=vocab,
                    rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                    mlp_class_name="LLaMAMLP", intermediate_size=3 * width, norm_eps=1e-5)
    torch.manual_seed(0)
    model = GPT(config)
    return save_model_dir(root / "model", model.state_dict(), config, tokenizer_dir=tok_dir,
                          meta={"prompt_style": get_style("chatml").to_json(), "family": "llama",
                                "eos_token": "<|endoftext|>"})


class DecodeClock:
    """Tokens/s and tokens per CPU-second of this process, both counted from the first token.

    The CPU figure leaves out time spent waiting for a core, so it stays meaningful on a machine
    shared with other work; with one thread it is the generating thread's own time.
    """

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None

    def tick(self) -> bool:
        """Call once per token; returns False so it can serve as an engine's `should_stop`."""
        if self.first is None:
            self.first = (time.perf_counter(), time.process_time())
        return False

    def rates(self, tokens: int) -> tuple[float, float]:
        assert self.first is not None, "no token was generated"
        wall, cpu = time.perf_counter() - self.first[0], time.process_time() - self.first[1]
        return (tokens - 1) / wall, (tokens - 1) / max(cpu, 1e-9)


def litgpt_decode_rates(model: Any, ids: Any, tokens: int) -> tuple[float, float]:
    """LitGPT's own generation loop: greedy, exactly `tokens` new tokens."""
    from litgpt.generate.base import generate_fn

    clock, n = DecodeClock(), 0
    for _ in generate_fn(model, ids, len(ids) + tokens, temperature=0.0, include_prompt=False,
                         include_eos=True):
        clock.tick()
        n += 1
    return clock.rates(n)


def engine_decode_rates(engine: Any, prompt: str, tokens: int) -> tuple[float, float]:
    """One of our engines, timed from its first sampled token (not its first text piece, which a
    random model's broken UTF-8 can hold back)."""
    from workbench_chat.engine import Sampling

    engine.forget()
    clock = DecodeClock()
    for _ in engine.stream_text(prompt, Sampling(temperature=0, max_tokens=tokens), stop=[],
                                should_stop=clock.tick):
        pass
    return clock.rates(engine.last_stats.tokens)


def turn5_ttft(engine: Any, reuse: bool) -> tuple[float, int, int]:
    """Time to first token on turn 5, prompt tokens and how many came from the KV cache."""
    from workbench_chat.engine import Sampling
    from workbench_chat.session import ChatSession

    engine.forget()
    engine.prompt_cache = reuse
    session = ChatSession(engine, system="You are a helpful assistant who answers in detail.",
                          sampling=Sampling(temperature=0, max_tokens=48))
    for turn in range(5):
        for event in session.send(f"{QUESTION} (question {turn + 1})"):
            if event["type"] == "error":
                raise RuntimeError(event["message"])
    engine.prompt_cache = True
    s = engine.last_stats
    return s.ttft_s, s.prompt_tokens, s.cached_prompt_tokens


def response_cache_ttft(engine: Any, root: Path) -> tuple[float, float]:
    from workbench_chat.engine import Sampling
    from workbench_chat.respcache import ResponseCache
    from workbench_chat.session import ChatSession

    cache = ResponseCache(root / "responses.sqlite")
    times = []
    for _ in range(2):
        engine.forget()
        session = ChatSession(engine, sampling=Sampling(temperature=0, max_tokens=64), response_cache=cache)
        done = next(e for e in session.send(QUESTION) if e["type"] == "done")
        times.append(done["stats"]["total_s"])
    cache.close()
    return times[1], times[0]


#: Other processes on the machine: one busy core, and torch computing on every core as a training
#: run does. Each prints a line once it is computing.
BUSY_JOBS = {
    "one busy core": 'print("computing", flush=True)\nwhile True: pass',
    "a torch job on every core": (
        "import torch, sys\ntorch.set_num_threads(int(sys.argv[1]))\nx = torch.randn(1024, 1024)\nx @ x\n"
        'print("computing", flush=True)\nwhile True: x @ x'),
}


def beside_busy_job(job_code: str, path: Path, prompt: str, tokens: int,
                    repeats: int) -> tuple[float, int, float, int]:
    """Decode tokens/s while another process computes: (rate, threads) with the threads the
    engine picks, then with all cores."""
    from workbench_chat.engine import open_engine

    from workbench.hardware import physical_cores

    cores = physical_cores()
    job = subprocess.Popen([sys.executable, "-c", job_code, str(cores)], stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout is not None and job.stdout.readline(), "the busy job did not start"
        picked = open_engine(str(path), n_ctx=2048)
        every = open_engine(str(path), n_ctx=2048, threads=cores)
        time.sleep(0.5)  # a person typing: the engine watches the machine meanwhile
        rates: dict[str, list[float]] = {"picked": [], "every": []}
        for _ in range(repeats):
            rates["picked"].append(engine_decode_rates(picked, prompt, tokens)[0])
            rates["every"].append(engine_decode_rates(every, prompt, tokens)[0])
        threads = picked.last_stats.threads
        picked.close()
        every.close()
    finally:
        job.kill()
        job.wait()
    return statistics.median(rates["picked"]), threads, statistics.median(rates["every"]), cores


def measure(width: int, layers: int, vocab: int, tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    import torch
    from workbench_chat.engine import open_engine
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        root = Path(tmp)
        model_dir = build_model(root, width, layers, vocab)
        f16 = root / "model-f16.gguf"
        write_gguf(model_dir, f16, "f16")
        q4 = root / "model-q4_k_m.gguf"
        report = quantize(f16, q4, "q4_k_m")
        out["q4_fallbacks"] = len(report["fallbacks"])
        out["sizes_mb"] = {"f16": f16.stat().st_size / 1e6, "q4_k_m": q4.stat().st_size / 1e6}

        from workbench.ml.checkpoint import load_model

        litgpt_model = load_model(model_dir)
        litgpt_model.set_kv_cache(batch_size=1)
        engines = {name: open_engine(str(path), threads=threads, n_ctx=2048)
                   for name, path in (("torch_engine", model_dir), ("f16", f16), ("q4_k_m", q4))}
        prompt = engines["torch_engine"].render([{"role": "user", "content": QUESTION}])
        ids = engines["torch_engine"].tokenizer.encode(prompt)
        runs: dict[str, Callable[[], tuple[float, float]]] = {
            "litgpt": lambda: litgpt_decode_rates(litgpt_model, ids, tokens),
            **{name: (lambda e=e: engine_decode_rates(e, prompt, tokens)) for name, e in engines.items()},
        }
        # Round-robin, so a change in the machine's load hits every contender alike.
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                results[name].append(run())
        for name, rates in results.items():
            out[name] = (statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates))

        f16_engine = engines["f16"]
        out["turn5_reuse"] = min((turn5_ttft(f16_engine, True) for _ in range(repeats)), key=lambda r: r[0])
        out["turn5_full"] = min((turn5_ttft(f16_engine, False) for _ in range(repeats)), key=lambda r: r[0])
        out["response_cache"] = response_cache_ttft(f16_engine, root)
        for engine in engines.values():
            engine.close()
        out["busy"] = {name: beside_busy_job(code, q4, prompt, tokens, repeats) for name, code in BUSY_JOBS.items()}
    return out


def table(m: dict[str, Any], width: int, layers: int) -> list[dict]:
    shape = f"width {width}, {layers} layers, {m['threads']} thread{'s' if m['threads'] > 1 else ''}"
    reuse, full = m["turn5_reuse"], m["turn5_full"]
    hit, miss = m["response_cache"]
    out = []
    for clock, i in (("tokens/s", 0), ("tokens per CPU-s", 1)):
        peer = m["litgpt"][i]
        out += [
            {"figure": f"decode {clock}: llama.cpp F16 vs LitGPT torch ({shape})", "ours": m["f16"][i],
             "peer": peer, "ratio": m["f16"][i] / peer, "target": None},
            {"figure": f"decode {clock}: llama.cpp Q4_K_M vs LitGPT torch", "ours": m["q4_k_m"][i],
             "peer": peer, "ratio": m["q4_k_m"][i] / peer, "target": "≥ 5×"},
            {"figure": f"decode {clock}: our torch engine vs LitGPT generate_fn",
             "ours": m["torch_engine"][i], "peer": peer, "ratio": m["torch_engine"][i] / peer,
             "target": "≥ 0.9×"},
        ]
    return [*out,
        {"figure": f"turn-5 TTFT ms, KV reused ({reuse[2]}/{reuse[1]} cached) vs full ({full[1]} tok)",
         "ours": reuse[0] * 1e3, "peer": full[0] * 1e3, "ratio": full[0] / reuse[0], "target": "> 1× (speed-up)"},
        {"figure": "temperature-0 reply ms: response cache hit vs generated", "ours": hit * 1e3,
         "peer": miss * 1e3, "ratio": miss / hit, "target": "> 1× (speed-up)"},
        *({"figure": f"Q4_K_M tokens/s beside {name}: {b[1]} picked vs all {b[3]} threads",
           "ours": b[0], "peer": b[2], "ratio": b[0] / b[2], "target": "> 1× (speed-up)"}
          for name, b in m["busy"].items()),
    ]


def rows(**overrides: int) -> list[dict]:
    cfg = {**DEFAULTS, **overrides}
    return table(measure(**cfg), cfg["width"], cfg["layers"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=int, default=value)
    args = vars(p.parse_args())
    m = measure(**args)
    print(f"\nchat speed ({args['tokens']} new tokens, median of {args['repeats']}; GGUF sizes "
          f"{m['sizes_mb']['f16']:.1f} MB F16, {m['sizes_mb']['q4_k_m']:.1f} MB Q4_K_M, "
          f"{m['q4_fallbacks']} Q4_K fallbacks)")
    print(f"{'figure':72} {'ours':>10} {'peer':>10} {'ratio':>8}  target")
    for r in table(m, args["width"], args["layers"]):
        print(f"{r['figure']:72} {r['ours']:>10.1f} {r['peer']:>10.1f} {r['ratio']:>8.2f}  {r['target'] or ''}")


if __name__ == "__main__":
    main()
