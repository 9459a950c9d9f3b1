"""One small interface over the two ways to run a model here.

`open_engine(ref)` takes a GGUF file, a LitGPT checkpoint directory, or a `gguf`/`model`
artifact in the workspace and returns an `Engine`: GGUF runs through llama.cpp, a checkpoint
through torch. Both render the model's own chat template, stream text piece by piece, keep the
previous turn's KV cache for the next one, and record `Stats` for the last reply.

This module is light: the backends import llama_cpp or torch when a model is opened.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.hardware import FreeCores, physical_cores
from workbench.weightfiles import check_weights

#: Chat-turn end markers of common templates; used as stop strings when a template contains one.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")
#: Largest context a model gets unless --n-ctx asks for more: the KV cache grows with it.
DEFAULT_MAX_CTX = 4096
SMALL_MODEL_BYTES = 64 * 2**20

ShouldStop = Callable[[], bool]


class ContextOverflow(UserError):
    """The prompt alone does not fit in the context window."""


@dataclass
class Sampling:
    """How the next token is picked. temperature 0 means greedy (deterministic)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 512
    stop: list[str] = field(default_factory=list)

    def updated(self, values: Mapping[str, Any]) -> Sampling:
        """A copy with `values` applied; unknown keys or bad values are a UserError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        out = replace(self, **{k: v for k, v in values.items() if v is not None or k in ("seed", "max_tokens")})
        out.validate()
        return out

    def validate(self) -> None:
        def finite(x: Any) -> bool:  # JSON bodies may carry NaN and Infinity
            return isinstance(x, (int, float)) and math.isfinite(x)

        checks = [
            (finite(self.temperature) and self.temperature >= 0, "temperature must be a finite number ≥ 0"),
            (finite(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer ≥ 0 (0 turns it off)"),
            (finite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty must be a finite number > 0"),
            (self.seed is None or isinstance(self.seed, int), "seed must be an integer"),
            (self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens > 0),
             "max_tokens must be a positive integer"),
            (isinstance(self.stop, list) and all(isinstance(s, str) for s in self.stop), "stop must be a list of strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stats:
    """What the last reply cost. tokens_per_s is the decode rate after the first token."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    tokens: int = 0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = "stop"  # stop | length | interrupted
    from_cache: bool = False
    seed: int | None = None
    threads: int = 0  # CPU threads this reply ran on
    cores: int = 0  # how many it would have had on an idle machine

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @staticmethod
    def rate(tokens: int, t_first: float | None, t_end: float) -> float:
        if t_first is None or tokens < 2 or t_end <= t_first:
            return 0.0
        return (tokens - 1) / (t_end - t_first)


def stream_tokens(tokens: Generator[int, None, None], *, stats: Stats, max_new: int, is_stop: Callable[[int], bool],
                  decode: Callable[[int], str], flush: Callable[[], str], stop: list[str],
                  should_stop: ShouldStop | None = None) -> Iterator[str]:
    """The decode loop both engines share. `tokens` yields sampled ids lazily (the prompt runs
    when the first is asked for, so it counts in the time to first token); the loop counts them,
    ends on a stop token, a stop string, `should_stop` or `max_new`, and fills in `stats`."""
    scanner = StopScanner(stop)
    t0 = time.perf_counter()
    t_first: float | None = None
    finish, hit = "length", False
    with contextlib.closing(tokens):
        for token in tokens:
            t_first = t_first or time.perf_counter()
            stats.tokens += 1
            if should_stop and should_stop():
                finish = "interrupted"
                break
            if is_stop(token):
                finish = "stop"
                break
            text, hit = scanner.feed(decode(token))
            if text:
                yield text
            if hit:
                finish = "stop"
                break
            if stats.tokens >= max_new:
                break
    if not hit:
        tail = scanner.feed(flush())[0] + scanner.flush()
        if tail:
            yield tail
    t_end = time.perf_counter()
    stats.ttft_s = (t_first or t_end) - t0
    stats.total_s = t_end - t0
    stats.tokens_per_s = Stats.rate(stats.tokens, t_first, t_end)
    stats.finish_reason = finish


class StopScanner:
    """Finds stop strings in streamed text, holding back text that could be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to show, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class ModelRef:
    """A resolved model: what to load and how to name it."""

    backend: str  # "llama.cpp" or "torch"
    path: Path  # a .gguf file or a LitGPT checkpoint directory
    name: str  # shown to people
    ref: str  # stored with conversations so `--resume` can reopen it

    @property
    def weights(self) -> Path:
        if self.path.is_file():
            return self.path
        st = self.path / "model.safetensors"
        return st if st.exists() else self.path / "lit_model.pth"

    def identity(self) -> str:
        """Changes whenever the weights do: keys the response cache."""
        st = self.weights.stat()
        return f"{self.backend}:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class Engine(ABC):
    """A loaded model that chats. Not thread-safe: one reply at a time."""

    backend: str = ""

    def __init__(self, model: ModelRef, n_ctx: int):
        self.model = model
        self.name = model.name
        self.n_ctx = n_ctx
        #: Stop strings the chat template implies (turn-end markers), added to every chat request.
        self.chat_stop: list[str] = []
        #: Reuse the previous reply's KV cache when a prompt starts with the same tokens.
        self.prompt_cache = True
        #: Things worth telling the user once (a missing chat template, a context cap).
        self.notes: list[str] = []
        self.last_stats = Stats()
        self.threads = 1  # the CPU threads it runs on; each engine sets it when loading
        #: Set by `open_engine` unless --threads was given: it re-picks the threads before each
        #: reply. A chat lives long and the machine's load changes; the user's typing time between
        #: replies makes a good window to look at it.
        self.thread_plan: FreeCores | None = None

    @abstractmethod
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for a conversation, ending with the assistant's turn opener."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt exactly as the engine will feed them (BOS included if any)."""

    @abstractmethod
    def stream_text(self, prompt: str, sampling: Sampling, stop: list[str],
                    should_stop: ShouldStop | None = None) -> Iterator[str]:
        """Continue `prompt`, yielding text pieces; `self.last_stats` is set when it ends."""

    @abstractmethod
    def forget(self) -> None:
        """Drop the KV cache: the next prompt is processed from scratch."""

    def set_threads(self, n: int) -> None:  # noqa: B027 - optional hook
        """Run on `n` CPU threads from the next reply on."""

    def start_reply(self, stats: Stats) -> None:
        """Called by an engine before a reply: picks its threads and records them in `stats`."""
        if self.thread_plan is not None:
            n = self.thread_plan()
            if n != self.threads:
                self.set_threads(n)
                self.threads = n
        stats.threads = self.threads
        stats.cores = self.thread_plan.ceiling if self.thread_plan else self.threads

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               should_stop: ShouldStop | None = None) -> Iterator[str]:
        return self.stream_text(self.render(messages), sampling, [*self.chat_stop, *sampling.stop], should_stop)

    def count(self, messages: list[dict[str, str]]) -> int:
        return len(self.tokenize(self.render(messages)))

    def check_fits(self, n_prompt: int) -> None:
        if n_prompt >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt is {n_prompt} tokens but the context window holds {self.n_ctx}; "
                "shorten it or open the model with a larger --n-ctx")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""


def turn_end_stops(template: str) -> list[str]:
    return [m for m in TURN_END_MARKERS if m in template]


def thread_ceiling(backend: str, model_bytes: int) -> int:
    """The threads a model gets on an idle machine: every core, except that torch runs a small
    model on one (its per-operation barrier costs more than a second core gives; llama.cpp's
    does not: a 3.6 MB Q4_K_M decodes 10% faster on 2 cores than on 1)."""
    if backend == "torch" and model_bytes < SMALL_MODEL_BYTES:
        return 1
    return physical_cores()


def resolve_model(ref: str, store: Any | None = None) -> ModelRef:
    """A GGUF file, a LitGPT checkpoint directory, or a gguf/model artifact id or name."""
    path = Path(ref).expanduser()
    if path.exists():
        return _from_path(path.resolve(), name=path.name, ref=str(path.resolve()))
    if store is None:
        from workbench import locations
        from workbench.store import Store

        if not locations.db_path().exists():
            raise UserError(f"no model '{ref}': it is not a file, and the workspace has no gguf or "
                            "model artifacts yet; see `workbench models ls`")
        store = Store()
    art = store.find_artifact(ref, kinds=("gguf", "model"))
    if not art.path.exists():
        raise UserError(f"{art.kind} {art.id} is registered but its files are gone ({art.path})")
    return _from_path(art.path, name=f"{art.name} ({art.id})", ref=art.id)


def _from_path(path: Path, *, name: str, ref: str) -> ModelRef:
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF'); "
                            "give a .gguf file or a LitGPT checkpoint directory")
        return ModelRef("llama.cpp", path, name, ref)
    if (path / "model_config.yaml").exists():
        return ModelRef("torch", path, name, ref)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _from_path(ggufs[0], name=name, ref=ref)
    if len(ggufs) > 1:
        raise UserError(f"{path} holds {len(ggufs)} GGUF files; name one of them: "
                        + ", ".join(p.name for p in ggufs[:5]))
    raise UserError(f"{path} is neither a GGUF file nor a LitGPT checkpoint (no model_config.yaml)")


def open_engine(ref: str | ModelRef, *, n_ctx: int | None = None, threads: int | None = None,
                device: str = "auto", prompt_cache: bool = True, store: Any | None = None) -> Engine:
    """Load a model for chat. `n_ctx` defaults to the model's context length, capped at 4096."""
    model = ref if isinstance(ref, ModelRef) else resolve_model(ref, store)
    check_weights(model.weights)  # a damaged file is one line before anything loads
    if n_ctx is not None and n_ctx < 16:
        raise UserError(f"--n-ctx {n_ctx} is too small to chat in; use at least 16 tokens")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} is not a thread count; use 1 or more")
    plan = None
    if threads is None:
        # Made before the load, so a model that takes a while to load knows by its first
        # reply what else the machine is doing.
        plan = FreeCores(thread_ceiling(model.backend, model.weights.stat().st_size))
        threads = plan.ceiling
    engine: Engine
    if model.backend == "llama.cpp":
        from workbench_chat.llama_engine import LlamaEngine

        engine = LlamaEngine(model, n_ctx=n_ctx, threads=threads)
    else:
        from workbench.prompts import style_for_model

        style_for_model(model.path)  # a hostile chat template is refused before torch is even imported
        from workbench_chat.torch_engine import TorchEngine

        engine = TorchEngine(model, n_ctx=n_ctx, device=device, threads=threads)
    engine.prompt_cache = prompt_cache
    engine.thread_plan = plan
    return engine
