"""GGUF models through llama-cpp-python.

One `Llama` object lives as long as the engine. Every turn hands `Llama.generate` the whole
prompt; it compares it with the tokens already in its KV cache and evaluates only the new
suffix, so a follow-up turn costs its new tokens, not the whole history. The chat template comes
from the file (`tokenizer.chat_template`), is checked before the weights load, and is rendered
by the project's one sandboxed renderer (`workbench.prompts`), as in every other place.

The loop over `generate` is ours because `create_completion(stream=True)` detokenizes the whole
reply again for every token it yields: on a 300-token reply that was 95% of the time.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama

from workbench.errors import UserError
from workbench.prompts import CHATML, PromptStyle, check_chat_template
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


def gguf_header(path: str) -> tuple[int | None, str | None]:
    """The context length the model was trained with and its chat template, from the metadata."""
    from gguf import GGUFReader

    from workbench.weightfiles import check_gguf

    check_gguf(Path(path))
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError):  # numpy's reshape errors say nothing useful here
        raise UserError(f"{path} is not a readable GGUF file: it is truncated or corrupt; "
                        "copy or export it again") from None
    template_field = reader.get_field("tokenizer.chat_template")
    template = str(template_field.contents()) if template_field is not None else None
    arch_field = reader.get_field("general.architecture")
    ctx_field = reader.get_field(f"{arch_field.contents()}.context_length") if arch_field is not None else None
    return (int(ctx_field.contents()) if ctx_field is not None else None), template


class LlamaEngine(Engine):
    backend = "llama.cpp"

    def __init__(self, model: ModelRef, *, n_ctx: int | None, threads: int, f32_kv_cache: bool = False):
        trained, template = gguf_header(str(model.path))
        origin = f"model {model.name} (tokenizer.chat_template of {model.path})"
        if template:  # refused before llama.cpp reads gigabytes of weights
            check_chat_template(template, origin=origin)
        asked = n_ctx
        n_ctx = n_ctx or min(trained or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
        super().__init__(model, n_ctx)
        if asked is None and trained and trained > n_ctx:
            self.notes.append(f"context capped at {n_ctx} of the model's {trained} tokens "
                              "to keep the KV cache small; --n-ctx raises it")
        if trained and n_ctx > trained:
            self.notes.append(f"--n-ctx {n_ctx} exceeds the {trained} tokens this model was trained on; "
                              "expect worse answers past that point")
        # F32 K/V only for exact comparisons with torch; the F16 default halves the cache.
        # Flash attention is llama.cpp's own default but off in llama-cpp-python's; on a CPU it
        # decodes 15-25% faster (benchmarks/bench_chat.py).
        kv_type: dict[str, Any] = {"type_k": 0, "type_v": 0} if f32_kv_cache else {}
        # llama.cpp may round its context up; the window we manage stays `n_ctx`. It logs a
        # context beyond the trained one as an error, which self.notes already says in our
        # words; what it logs while loading only matters when loading fails.
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log):
                self.llm = Llama(model_path=str(model.path), n_ctx=n_ctx, n_threads=threads,
                                 n_threads_batch=threads, flash_attn=True, verbose=False, **kv_type)
        except ValueError as exc:
            last = next((line for line in reversed(log.getvalue().splitlines()) if line.strip()), str(exc))
            raise UserError(f"llama.cpp cannot load {model.path}: {last.strip()}") from None
        self.threads = threads
        self.eos_text = self._token_text(self.llm.token_eos())
        self.bos_text = self._token_text(self.llm.token_bos())
        if not template:
            template = CHATML
            self.notes.append("this GGUF has no chat template (tokenizer.chat_template); using ChatML")
        self.template = template
        self.style = PromptStyle("gguf", template, bos_token=self.bos_text, eos_token=self.eos_text, origin=origin)
        self.chat_stop = turn_end_stops(template)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._stop_ids: dict[str, int | None] = {}

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.style.render(messages)

    def tokenize(self, text: str) -> list[int]:
        # add_bos=True adds BOS only when the model asks for one; a template that writes
        # the BOS text itself must not get a second one.
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def forget(self) -> None:
        self.llm.reset()

    def stream_text(self, prompt: str, sampling: Sampling, stop: list[str],
                    should_stop: ShouldStop | None = None) -> Iterator[str]:
        tokens = self.tokenize(prompt)
        self.check_fits(len(tokens))
        if not self.prompt_cache:
            self.forget()
        cached = Llama.longest_token_prefix(self.llm.input_ids[: self.llm.n_tokens].tolist(), tokens)
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        self.llm.set_seed(seed)  # generate() builds its sampler from this seed
        stats = Stats(prompt_tokens=len(tokens), cached_prompt_tokens=cached, seed=seed)
        self.last_stats = stats
        self.start_reply(stats)
        stop_ids = {i for s in stop if (i := self._special_id(s)) is not None}
        budget = self.n_ctx - len(tokens)
        max_new = min(sampling.max_tokens or budget, budget)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens_out = self.llm.generate(
            tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=0.0, temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty)
        # One token's bytes at a time: constant work per token, unlike create_completion,
        # which detokenizes the whole reply again for every token it streams.
        yield from stream_tokens(
            tokens_out, stats=stats, max_new=max_new, stop=stop, should_stop=should_stop,
            is_stop=lambda t: llama_cpp.llama_vocab_is_eog(self.vocab, t) or t in stop_ids,
            decode=lambda t: utf8.decode(self.llm.detokenize([t])),
            flush=lambda: utf8.decode(b"", final=True))

    def set_threads(self, n: int) -> None:
        llama_cpp.llama_set_n_threads(self.llm.ctx, n, n)

    def _special_id(self, text: str) -> int | None:
        """The id of a stop string that is one control token (it detokenizes to nothing)."""
        if text not in self._stop_ids:
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            special = len(ids) == 1 and self.llm.detokenize(ids) == b""
            self._stop_ids[text] = ids[0] if special else None
        return self._stop_ids[text]

    def close(self) -> None:
        self.llm.close()
