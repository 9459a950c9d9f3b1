"""LitGPT checkpoints through torch, with a KV cache kept across turns.

The loop is ours rather than `litgpt.generate.base.generate_fn` because chat needs three things
it lacks: a seeded generator (reproducible replies), a repeat penalty (llama.cpp's semantics,
so both engines mean the same by it), and reuse of the cache across turns. LitGPT's KV cache
masks every position past the one being computed, so entries left over from the previous turn
beyond the shared prefix are harmless and only the new suffix is fed.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator

import torch
from litgpt.generate.base import sample_top_p

from workbench.hardware import choose_device, choose_precision
from workbench.ml.checkpoint import load_model, load_tokenizer
from workbench.prompts import get_style, style_for_model
from workbench_chat.engine import (
    DEFAULT_MAX_CTX,
    Engine,
    ModelRef,
    Sampling,
    ShouldStop,
    Stats,
    stream_tokens,
    turn_end_stops,
)

#: Tokens the repeat penalty looks back over (llama-cpp-python's default).
REPEAT_WINDOW = 64
_DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, model: ModelRef, *, n_ctx: int | None, device: str = "auto", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(choose_device(device))
        dtype = _DTYPES.get(choose_precision(self.device.type, training=False), torch.float32)
        self.gpt = load_model(model.path, device=self.device, dtype=dtype)
        block = self.gpt.config.block_size
        super().__init__(model, min(n_ctx or min(block, DEFAULT_MAX_CTX), block))
        if n_ctx and n_ctx > block:
            self.notes.append(f"--n-ctx {n_ctx} is beyond this checkpoint's block size; using {block}")
        self.gpt.max_seq_length = self.n_ctx
        self.gpt.set_kv_cache(batch_size=1, device=self.device, dtype=dtype)
        self.threads = torch.get_num_threads()
        self.tokenizer = load_tokenizer(model.path)
        style = style_for_model(model.path)
        if style is None:
            style = get_style("chatml")
            self.notes.append("this checkpoint stores no prompt style or chat template; using ChatML")
        self.style = style
        self.chat_stop = list(style.stop) or turn_end_stops(style.chat_template)
        self._stop_ids: dict[str, int | None] = {}
        self._cached: list[int] = []  # tokens whose keys and values sit in the KV cache

    def set_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.style.render(messages)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    def forget(self) -> None:
        self._cached = []

    def _special_id(self, text: str) -> int | None:
        """The id of a stop string that is one special token (its decoded text is empty)."""
        if text not in self._stop_ids:
            ids = self.tokenizer.encode(text, bos=False).tolist()
            special = len(ids) == 1 and self.tokenizer.decode(torch.tensor(ids)) == ""
            self._stop_ids[text] = ids[0] if special else None
        return self._stop_ids[text]

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Run `tokens` after the cached ones; the logits for the next position."""
        start = len(self._cached)
        idx = torch.tensor([tokens], device=self.device, dtype=torch.long)
        pos = torch.arange(start, start + len(tokens), device=self.device)
        logits = self.gpt(idx, input_pos=pos, input_pos_maxp1=start + len(tokens))
        self._cached.extend(tokens)
        return logits[0, -1]

    @torch.inference_mode()
    def stream_text(self, prompt: str, sampling: Sampling, stop: list[str],
                    should_stop: ShouldStop | None = None) -> Iterator[str]:
        ids = self.tokenize(prompt)
        self.check_fits(len(ids))
        reuse = _common_prefix(self._cached, ids) if self.prompt_cache else 0
        reuse = min(reuse, len(ids) - 1)  # the last prompt token must run to give the next logits
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stats = Stats(prompt_tokens=len(ids), cached_prompt_tokens=reuse, seed=seed)
        self.last_stats = stats
        self.start_reply(stats)
        stop_ids = {self.tokenizer.eos_id} | {i for s in stop if (i := self._special_id(s)) is not None}
        budget = self.n_ctx - len(ids)
        max_new = min(sampling.max_tokens or budget, budget)
        decoder = _Decoder(self.tokenizer, ids[-1])

        def sampled() -> Generator[int, None, None]:
            self._cached = self._cached[:reuse]
            logits = self._feed(ids[reuse:])
            history = list(ids)
            while True:
                token = _sample(logits, sampling, history, generator)
                history.append(token)
                yield token
                logits = self._feed([token])  # only when the loop asks for another token

        yield from stream_tokens(sampled(), stats=stats, max_new=max_new, stop=stop, should_stop=should_stop,
                                 is_stop=stop_ids.__contains__, decode=decoder.push, flush=decoder.flush)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _sample(logits: torch.Tensor, s: Sampling, history: list[int], generator: torch.Generator) -> int:
    """llama.cpp's order: repeat penalty, top-k, top-p, then temperature."""
    logits = logits.float().clone()
    if s.repeat_penalty != 1.0:
        recent = torch.tensor(sorted(set(history[-REPEAT_WINDOW:])), device=logits.device)
        vals = logits[recent]
        logits[recent] = torch.where(vals > 0, vals / s.repeat_penalty, vals * s.repeat_penalty)
    if s.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < s.top_k < logits.size(-1):
        values, indices = torch.topk(logits, s.top_k)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    if s.top_p < 1.0:
        logits = sample_top_p(logits, s.top_p)
    probs = torch.softmax(logits / s.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Decoder:
    """Token ids to text, piece by piece.

    Each piece is decoded after one token of context (so a SentencePiece word keeps its leading
    space) and held back while it ends in an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer: object, context: int):
        self.tokenizer = tokenizer
        self.context = context
        self.pending: list[int] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(torch.tensor(ids))  # type: ignore[attr-defined]

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self._decode([self.context, *self.pending])[len(self._decode([self.context])):]
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.context, self.pending = self.pending[-1], []
        return text

    def flush(self) -> str:
        if not self.pending:
            return ""
        text = self._decode([self.context, *self.pending])[len(self._decode([self.context])):]
        self.pending = []
        return text
