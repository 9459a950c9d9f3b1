"""A stand-in for `workbench chat MODEL --jsonl`, used only as a test double for that child
process: it speaks the same JSON-lines protocol without loading any model, so the chat
screen's tests stay fast. The real command is tested with the chat plugin.

Usage: python fake_chat.py MODEL [--resume ID] --jsonl
Each reply is "echo: <the user's words>" (prefixed by "[<system>] " when a system prompt is
given), streamed one word per `token` message; the turn count shows that history is kept. With --resume, the stored conversation is read from
the workspace, as the real command does, and its turns count. The model "missing-model" fails at
once, "broken-model" while "loading", as soon as the file `load-fails` appears in the workspace.
"""

from __future__ import annotations

import json
import sys
import time


def emit(**message: object) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    model = sys.argv[1]
    if model == "missing-model":
        sys.stderr.write(f"error: no model '{model}' in the workspace\n")
        return 2
    if model == "broken-model":  # fails mid-load, once the test has created the file `load-fails`
        from workbench import locations

        while not (locations.home() / "load-fails").exists():
            time.sleep(0.05)
        sys.stderr.write(f"error: model '{model}' could not be loaded\n")
        return 2
    resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
    messages, system = [], ""
    if resume:
        from workbench.store import Store

        conv = Store().get_conversation(resume)
        messages = [{"role": m["role"], "content": m["content"]} for m in conv["messages"]]
        system = conv["system_prompt"]
    emit(type="ready", model=model, n_ctx=256, conversation_id=resume, system=system, messages=messages)
    turns = sum(m["role"] == "user" for m in messages)
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "reset":
            turns = 0
            emit(type="notice", message="new conversation")
            continue
        turns += 1
        words = ["echo:", *message["content"].split(), f"(turn {turns})"]
        if message.get("system"):
            words.insert(0, f"[{message['system']}]")
        if turns == 3:
            emit(type="notice", message="context trimmed to fit 256 tokens")
        for i, word in enumerate(words):
            emit(type="token", text=word if i == 0 else " " + word)
            time.sleep(0.01)
        emit(type="done", stats={"tokens": len(words), "tokens_per_s": 123.4, "ttft_s": 0.05},
             conversation_id="chat-000000-fake01")
    return 0


if __name__ == "__main__":
    sys.exit(main())
