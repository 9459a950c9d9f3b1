"""A conversation with one engine: history, the context window, storage and the response cache.

`ChatSession.send()` yields plain dict events, the same ones the `--jsonl` protocol writes:
`notice` (the context was trimmed), `token` (a piece of the reply), `done` (stats and the
conversation id) or `error`. The terminal REPL, the JSON-lines loop and the tests all read them.

The full history is stored in the workspace database as it happens; when it outgrows the
context window, the oldest turns leave the model's view (the system prompt stays) but remain in
the stored conversation. A system prompt changed mid-conversation is stored as a `system`
message, so a resumed conversation picks up the latest one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from workbench_chat.engine import ContextOverflow, Engine, Sampling, ShouldStop, Stats
from workbench_chat.respcache import ResponseCache, cache_key

Event = dict[str, Any]
#: The fewest tokens left for an answer before a prompt counts as not fitting at all.
MIN_ANSWER_TOKENS = 4


class ChatSession:
    def __init__(self, engine: Engine, *, store: Any | None = None, model_ref: str = "",
                 system: str = "", sampling: Sampling | None = None,
                 response_cache: ResponseCache | None = None):
        self.engine = engine
        self.store = store
        self.model_ref = model_ref or engine.model.ref
        self.system = system
        self.sampling = sampling or Sampling()
        self.cache = response_cache
        self.messages: list[dict[str, str]] = []  # user and assistant turns, oldest first
        self.window_start = 0  # first message the model still sees
        self.conversation_id: str | None = None

    @classmethod
    def resume(cls, engine: Engine, store: Any, ref: str, *, sampling: Sampling | None = None,
               response_cache: ResponseCache | None = None) -> ChatSession:
        """Reopen a stored conversation; `sampling` (if given) replaces the stored settings."""
        conv = store.get_conversation(ref)
        stored = Sampling().updated(conv["settings"].get("sampling", {}))
        session = cls(engine, store=store, model_ref=conv["model"], system=conv["system_prompt"],
                      sampling=sampling or stored, response_cache=response_cache)
        for m in conv["messages"]:
            if m["role"] == "system":
                session.system = m["content"]
            else:
                session.messages.append({"role": m["role"], "content": m["content"]})
        session.conversation_id = conv["id"]
        return session

    # ------------------------------------------------------------------------------------------

    def window(self) -> list[dict[str, str]]:
        """What the model sees: the system prompt, then the turns still in the window."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages[self.window_start:]

    def set_system(self, text: str) -> None:
        self.system = text
        if self.conversation_id and self.store is not None:
            self.store.add_message(self.conversation_id, "system", text)

    def reset(self) -> None:
        """Start a new conversation (same model, system prompt and settings)."""
        self.messages, self.window_start, self.conversation_id = [], 0, None

    def send(self, content: str, *, sampling: Sampling | None = None,
             should_stop: ShouldStop | None = None) -> Iterator[Event]:
        """Add a user message and stream the reply as events."""
        sampling = sampling or self.sampling
        self.messages.append({"role": "user", "content": content})
        try:
            prompt, dropped = self._fit(sampling)
        except ContextOverflow as exc:
            self.messages.pop()
            yield {"type": "error", "message": str(exc)}
            return
        if dropped:
            yield {"type": "notice", "message": (
                f"the conversation outgrew the {self.engine.n_ctx}-token context window: the oldest "
                f"{dropped} message{'s are' if dropped != 1 else ' is'} no longer seen by the model "
                "(the system prompt is kept)")}
        self._save("user", content, sampling=sampling)

        stop = [*self.engine.chat_stop, *sampling.stop]
        key = None
        if self.cache is not None and sampling.temperature == 0:
            key = cache_key(self.engine.model.identity(), prompt, sampling.to_json(), stop)
        t0 = time.perf_counter()
        hit = self.cache.get(key) if key and self.cache is not None else None
        if hit is not None:
            reply = hit[0]
            stats = Stats(**{**hit[1], "from_cache": True, "cached_prompt_tokens": 0})
            stats.ttft_s = stats.total_s = time.perf_counter() - t0
            stats.tokens_per_s = 0.0
            yield {"type": "token", "text": reply}
        else:
            pieces: list[str] = []
            for piece in self.engine.stream_text(prompt, sampling, stop, should_stop):
                pieces.append(piece)
                yield {"type": "token", "text": piece}
            reply, stats = "".join(pieces), self.engine.last_stats
            if key and self.cache is not None and stats.finish_reason != "interrupted":
                self.cache.put(key, reply, stats.to_json())

        self.messages.append({"role": "assistant", "content": reply})
        self._save("assistant", reply, stats=stats.to_json())
        yield {"type": "done", "stats": stats.to_json(), "conversation_id": self.conversation_id}

    # ------------------------------------------------------------------------------------------

    def _fit(self, sampling: Sampling) -> tuple[str, int]:
        """The prompt for the current window, after dropping the oldest turns that do not fit.

        Room is kept for an answer: max_tokens, but at most a quarter of the window.
        """
        n_ctx = self.engine.n_ctx
        reserve = min(sampling.max_tokens or n_ctx, n_ctx // 4)
        last_user = len(self.messages) - 1
        dropped = 0
        while True:
            prompt = self.engine.render(self.window())
            n = len(self.engine.tokenize(prompt))
            if n + reserve <= n_ctx or self.window_start >= last_user:
                break
            # Drop one whole turn: up to the next user message.
            nxt = next(i for i in range(self.window_start + 1, len(self.messages))
                       if self.messages[i]["role"] == "user")
            dropped += nxt - self.window_start
            self.window_start = nxt
        if n > n_ctx - MIN_ANSWER_TOKENS:
            what = "the system prompt and your message take" if self.system else "your message takes"
            raise ContextOverflow(
                f"{what} {n} tokens, but the context window holds {n_ctx} with room for an answer; "
                "shorten it or reopen the model with a larger --n-ctx")
        return prompt, dropped

    def _save(self, role: str, content: str, *, sampling: Sampling | None = None,
              stats: dict[str, Any] | None = None) -> None:
        if self.store is None:
            return
        if self.conversation_id is None:
            title = " ".join(content.split())[:60] or "untitled"
            settings = {"sampling": (sampling or self.sampling).to_json(), "n_ctx": self.engine.n_ctx,
                        "backend": self.engine.backend}
            self.conversation_id = self.store.add_conversation(
                title, self.model_ref, system_prompt=self.system, settings=settings)
        self.store.add_message(self.conversation_id, role, content, stats=stats)

