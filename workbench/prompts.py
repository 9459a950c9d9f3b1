"""Prompt styles: one Jinja chat template per style, used for training, chat and GGUF export.

Rendering the same template everywhere (here with jinja2; in llama.cpp from the GGUF's
`tokenizer.chat_template`) is what keeps a finetuned model's prompt format intact from training
to chat. Light module: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from workbench.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@lru_cache(maxsize=32)
def _compile(chat_template: str) -> Any:
    """Compiling a template costs ~15 ms; datasets render it twice per example."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
    return env.from_string(chat_template)


@dataclass
class PromptStyle:
    name: str
    chat_template: str
    stop: list[str] = field(default_factory=list)
    default_system: str = ""
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        template = _compile(self.chat_template)
        if self.default_system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token, eos_token=self.eos_token,
        )

    def split_example(self, instruction: str, response: str, input: str = "", system: str = "") -> tuple[str, str]:
        """(prompt, response) for supervised training; the loss goes on the response part.

        The full text is prompt + response, and the response ends with the style's end marker,
        so the model learns to stop.
        """
        user = instruction if not input else f"{instruction}\n\n{input}"
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        prompt = self.render(msgs, add_generation_prompt=True)
        full = self.render([*msgs, {"role": "assistant", "content": response}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise UserError(f"prompt style '{self.name}' does not render the prompt as a prefix of the full example")
        return prompt, full[len(prompt):]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "chat_template": self.chat_template, "stop": self.stop,
                "default_system": self.default_system}


def get_style(name: str, *, eos_token: str = "<|endoftext|>", base_template: str | None = None) -> PromptStyle:
    """`chatml`, `alpaca`, or `base` (the model's own chat template, from its tokenizer config)."""
    if name == "chatml":
        return PromptStyle("chatml", CHATML, stop=["<|im_end|>"], eos_token=eos_token)
    if name == "alpaca":
        return PromptStyle("alpaca", ALPACA, stop=["### Instruction:"], default_system=ALPACA_SYSTEM,
                           eos_token=eos_token)
    if name == "base":
        if not base_template:
            raise UserError("prompt style 'base' needs a model whose tokenizer config has a chat_template")
        return PromptStyle("base", base_template, stop=[], eos_token=eos_token)
    raise UserError(f"unknown prompt style '{name}'; choose chatml, alpaca or base")


STYLES = ("chatml", "alpaca", "base")


def style_for_model(model_dir: Path) -> PromptStyle | None:
    """The prompt style stored with a model (workbench.json), else its own chat template."""
    meta_path = model_dir / "workbench.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        style = meta.get("prompt_style")
        if isinstance(style, dict):
            return PromptStyle(style["name"], style["chat_template"], style.get("stop", []),
                               style.get("default_system", ""), eos_token=meta.get("eos_token", ""))
    tc = model_dir / "tokenizer_config.json"
    if tc.exists():
        cfg = json.loads(tc.read_text())
        template = cfg.get("chat_template")
        if isinstance(template, str):
            eos = cfg.get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            return PromptStyle("base", template, eos_token=eos or "")
    return None
