"""The chat plugin as a child process speaking JSON lines (`workbench chat MODEL --jsonl`).

No model library enters the UI process: the child loads the model, keeps the conversation and
streams `ready`, `token`, `done`, `notice` and `error` objects, one per line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

DEFAULT_COMMAND = (sys.executable, "-m", "workbench.cli", "chat")
#: How long a child may take to exit after its input closes before it is killed.
STOP_TIMEOUT_S = 3.0


class ChatClient:
    def __init__(self, command: Sequence[str] | None = None):
        self.command = list(command or DEFAULT_COMMAND)
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr: deque[str] = deque(maxlen=20)
        self._drain: asyncio.Task[None] | None = None

    async def start(self, model: str, resume: str | None = None) -> None:
        """Start the child for `model`; with `resume`, it continues that stored conversation."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        extra = ["--resume", resume] if resume else []
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, model, *extra, "--jsonl",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
            # A reply can be one long line; the default 64 KiB limit would cut it.
            limit=16 * 1024 * 1024,
        )
        # Read stderr all along: a child that logs more than a pipe holds would otherwise stall.
        self._drain = asyncio.create_task(self._read_stderr(self.proc))

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr.append(text)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def send(self, message: dict[str, Any]) -> None:
        if not self.running or self.proc is None or self.proc.stdin is None:
            raise ConnectionError("the chat process is not running")
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Messages until the child exits; its exit is reported as `{"type": "exit"}`."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                message = json.loads(text)
            except json.JSONDecodeError:
                # Something printed outside the protocol; show it rather than lose it.
                message = {"type": "notice", "message": text}
            if isinstance(message, dict):
                yield message
        code = await proc.wait()
        if self._drain is not None:
            await self._drain
        yield {"type": "exit", "code": code, "stderr": self.stderr[-1] if self.stderr else ""}

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of input: the protocol's way to say goodbye
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
