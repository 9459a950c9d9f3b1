"""Verification: load a GGUF in llama.cpp and compare it with the LitGPT model it came from.

The LitGPT side (`Reference`) is computed once per export: next-token logits on probe prompts,
greedy continuations, and the perplexity of held-out text. Each GGUF is then run through
llama-cpp-python with an F32 KV cache (`type_k=0, type_v=0`; the default F16 cache is
llama.cpp's own precision choice and would hide export bugs under its noise) and judged:

- every file: llama.cpp tokenizes the probe texts exactly as our tokenizer does;
- exact files (F32): logits within `tolerance` of LitGPT's (relative to the largest logit)
  and identical greedy tokens;
- every other file: perplexity on the held-out text within `max_ppl_increase` of LitGPT's.

    ref = Reference.build(model_dir, heldout_text=text)
    result = verify_gguf(path, ref, exact=True)
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import UserError
from workbench.hardware import free_cores, torch_threads
from workbench.prompts import style_for_model
from workbench_export.families import read_config, shape_of

# Strings where tokenizers like to disagree: runs of spaces, newlines and tabs, digits,
# accents, CJK, emoji with joiners and skin tones, combining marks, code, contractions.
TRICKY_TEXTS = (
    "Hello world",
    "  two leading spaces, three trailing   ",
    "line one\nline two\n\n\ttabbed\r\nwindows line\n",
    "digits 0 12 345 6789 3.14159 1,000,000 2024-06-01 +42 -7",
    "Unicode: café naïve Zürich 東京 Привет мир ελληνικά 🙂👍🏽",
    "joiners 👩\u200d💻 and combining e\u0301 vs é",
    "def add(a, b):\n    return a + b  # sum\n\n\nclass A:\n\tpass\n",
    "Don't stop; it's fine, isn't it? We'll see. I'M LOUD, YOU'RE NOT",
    "{\"key\": [1, 2.5, null], 'x': \"y\"}",
    "   ",
    "a",
)
# Prompts whose next-token logits and greedy continuations are compared.
LOGIT_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Numbers: 3.14159, 2024, 1_000_000; café 東京 🙂",
)


@dataclass
class Verification:
    file: str
    exact: bool
    passed: bool
    problems: list[str] = field(default_factory=list)
    max_abs_diff: float = float("nan")
    rel_diff: float = float("nan")
    top1_agreement: float = float("nan")
    greedy_identical: bool = False
    tokenizer_mismatches: list[dict[str, Any]] = field(default_factory=list)
    ppl: float = float("nan")
    ref_ppl: float = float("nan")
    ppl_delta: float = float("nan")
    ppl_increase: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {k: clean(v) for k, v in asdict(self).items()}


def _nll(logits: np.ndarray, targets: Sequence[int], rows: int = 32) -> float:
    """Summed negative log-likelihood of `targets` under row-wise `logits`, in float64.

    A few rows at a time: with a large vocabulary, float64 copies of a whole chunk's logits
    would cost more memory than the model.
    """
    total = 0.0
    for i in range(0, len(targets), rows):
        x = logits[i:i + rows].astype(np.float64)
        x -= x.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(x).sum(axis=-1))
        picked = x[np.arange(len(x)), np.asarray(targets[i:i + rows])]
        total += float((logz - picked).sum())
    return total


def _load_reference_model(model_dir: Path, state_dict: Mapping[str, torch.Tensor] | None) -> Any:
    """The LitGPT model in F32; a given state dict is used in place (no second copy)."""
    from workbench.ml.checkpoint import load_config, load_model
    from workbench.ml.rope import model_class

    if state_dict is None:
        return load_model(model_dir, dtype=torch.float32)
    config = load_config(model_dir)
    with torch.device("meta"):
        model = model_class(config)(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items()}, strict=True, assign=True)
    # Rotary caches are non-persistent buffers made on the meta device; rebuild them for real.
    model.cos, model.sin = model.rope_cache(device=torch.device("cpu"))
    return model.eval()


def _raw_encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids without BOS/EOS, special tokens in the text recognised (as HF tokenizers do)."""
    if tokenizer.backend == "huggingface":
        return list(tokenizer.processor.encode(text, add_special_tokens=False).ids)
    return list(tokenizer.processor.encode(text))


@dataclass
class Reference:
    """LitGPT's answers, computed once and compared with every exported file."""

    model_dir: Path
    probe_ids: list[list[int]]
    probe_logits: list[np.ndarray]
    greedy: list[list[int]]
    ppl_chunks: list[list[int]]
    ref_ppl: float
    chat_text: str
    tokenizer: Any = field(repr=False)
    n_ctx: int = 0

    @classmethod
    def build(cls, model_dir: Path, *, heldout_text: str, state_dict: Mapping[str, torch.Tensor] | None = None,
              max_ppl_tokens: int = 1024, ppl_ctx: int = 256, n_greedy: int = 8,
              progress: Callable[[int, int], None] | None = None) -> Reference:
        from workbench.ml.checkpoint import load_tokenizer

        model_dir = Path(model_dir)
        model = _load_reference_model(model_dir, state_dict)
        tokenizer = load_tokenizer(model_dir)
        # The context llama.cpp runs with the same math (a Mistral's window, say), not LitGPT's block.
        block = shape_of(read_config(model_dir)).context_length
        max_probe = max(8, min(64, block - n_greedy))
        probe_ids = [tokenizer.encode(t).tolist()[:max_probe] for t in LOGIT_PROBES]
        style = style_for_model(model_dir)
        chat_text = style.render([{"role": "user", "content": "What is 2 + 3?"}]) if style else ""
        if chat_text:
            probe_ids.append(_raw_encode(tokenizer, chat_text)[-max_probe:])
        ctx = max(2, min(ppl_ctx, block))
        ids = tokenizer.encode(heldout_text).tolist()[:max_ppl_tokens]
        chunks = [ids[i:i + ctx] for i in range(0, len(ids), ctx)]
        chunks = [c for c in chunks if len(c) >= 2]
        if not chunks:
            raise UserError("the held-out text for perplexity is shorter than two tokens; give a longer one")
        steps = len(probe_ids) * (n_greedy + 1) + len(chunks)
        done = 0
        logits_out, greedy = [], []
        with torch.no_grad(), torch_threads(free_cores()):
            for ids_ in probe_ids:
                logits_out.append(model(torch.tensor([ids_]))[0].numpy())
                seq = list(ids_)
                for _ in range(n_greedy):
                    seq.append(int(model(torch.tensor([seq[-block:]]))[0, -1].argmax()))
                    done += 1
                greedy.append(seq[len(ids_):])
                done += 1
                if progress:
                    progress(done, steps)
            nll, count = 0.0, 0
            for chunk in chunks:
                nll += _nll(model(torch.tensor([chunk]))[0].numpy()[:-1], chunk[1:])
                count += len(chunk) - 1
                done += 1
                if progress:
                    progress(done, steps)
        n_ctx = max(max(len(p) for p in probe_ids) + n_greedy, max(len(c) for c in chunks))
        return cls(model_dir=model_dir, probe_ids=probe_ids, probe_logits=logits_out, greedy=greedy,
                   ppl_chunks=chunks, ref_ppl=math.exp(nll / count), chat_text=chat_text,
                   tokenizer=tokenizer, n_ctx=n_ctx)


def load_llama(path: Path, n_ctx: int, *, logits_all: bool = True) -> Any:
    """llama-cpp-python on CPU with an F32 KV cache: the configuration verification trusts."""
    from llama_cpp import Llama

    threads = free_cores()
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                 type_k=0, type_v=0, n_gpu_layers=0, n_threads=threads, n_threads_batch=threads,
                 verbose=False)


def tokenizer_agreement(tokenizer: Any, llm: Any, texts: Sequence[str] = TRICKY_TEXTS,
                        chat_text: str = "") -> list[dict[str, Any]]:
    """Texts that our tokenizer and llama.cpp's split differently (empty when they agree)."""
    mismatches = []
    cases = [(t, False) for t in texts] + ([(chat_text, True)] if chat_text else [])
    # llama.cpp applies no normalizer: an NFC-normalising tokenizer (Qwen2) agrees with it on NFC
    # text only, and decomposed accents are a documented difference, not an export fault.
    nfc = type(getattr(getattr(tokenizer, "processor", None), "normalizer", None)).__name__ == "NFC"
    for text, special in cases:
        text = unicodedata.normalize("NFC", text) if nfc else text
        ours = _raw_encode(tokenizer, text)
        theirs = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        if ours != theirs:
            mismatches.append({"text": text, "ours": ours[:32], "llama_cpp": theirs[:32]})
    return mismatches


def verify_gguf(path: Path, ref: Reference, *, exact: bool, tolerance: float = 1e-4,
                max_ppl_increase: float = 1.0) -> Verification:
    """Compare one GGUF file with the reference; `exact` asks for the F32 standard."""
    result = Verification(file=Path(path).name, exact=exact, passed=False)
    try:
        llm = load_llama(Path(path), ref.n_ctx)
    except Exception as exc:  # llama.cpp refuses broken files with a bare ValueError
        result.problems.append(f"llama.cpp could not load the file: {exc}")
        return result
    try:
        result.tokenizer_mismatches = tokenizer_agreement(ref.tokenizer, llm, chat_text=ref.chat_text)
        if result.tokenizer_mismatches:
            first = result.tokenizer_mismatches[0]
            result.problems.append(
                f"llama.cpp tokenizes {len(result.tokenizer_mismatches)} probe text(s) differently, "
                f"e.g. {first['text']!r}: ours {first['ours'][:8]} vs llama.cpp {first['llama_cpp'][:8]}")
        diffs, scale, agree, total, greedy_same = [], 0.0, 0, 0, True
        for ids, ref_logits, ref_greedy in zip(ref.probe_ids, ref.probe_logits, ref.greedy, strict=True):
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
            if not np.isfinite(logits).all():
                result.problems.append("llama.cpp produced non-finite logits")
                return result
            diffs.append(float(np.abs(logits - ref_logits).max()))
            scale = max(scale, float(np.abs(ref_logits).max()))
            agree += int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
            total += len(ids)
            generated = []
            for _ in ref_greedy:
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                generated.append(nxt)
                llm.eval([nxt])
            greedy_same = greedy_same and generated == ref_greedy
        result.max_abs_diff = max(diffs)
        result.rel_diff = result.max_abs_diff / max(scale, 1e-6)
        result.top1_agreement = agree / total
        result.greedy_identical = greedy_same
        nll, count = 0.0, 0
        for chunk in ref.ppl_chunks:
            llm.reset()
            llm.eval(chunk)
            nll += _nll(llm.scores[:len(chunk) - 1], chunk[1:])
            count += len(chunk) - 1
        result.ppl, result.ref_ppl = math.exp(nll / count), ref.ref_ppl
        result.ppl_delta = result.ppl - ref.ref_ppl
        result.ppl_increase = result.ppl_delta / ref.ref_ppl
    finally:
        llm.close()
    if exact:
        if not result.rel_diff <= tolerance:
            result.problems.append(
                f"logits differ from LitGPT's by {result.max_abs_diff:.3g} "
                f"({result.rel_diff:.2e} of the largest logit; limit {tolerance:.0e})")
        if not result.greedy_identical:
            result.problems.append("greedy tokens differ from LitGPT's")
    if not result.ppl_increase <= max_ppl_increase:
        result.problems.append(
            f"perplexity rose from {ref.ref_ppl:.4g} to {result.ppl:.4g} "
            f"(+{100 * result.ppl_increase:.1f}%, limit +{100 * max_ppl_increase:.0f}%)")
    result.passed = not result.problems
    return result
