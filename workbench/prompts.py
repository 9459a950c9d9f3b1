"""Prompt styles: one Jinja chat template per style, used for training, chat and GGUF export.

Rendering the same template everywhere (here with jinja2; in llama.cpp from the GGUF's
`tokenizer.chat_template`) is what keeps a finetuned model's prompt format intact from training
to chat. Light module: no torch.

Chat templates arrive with downloaded models, so they are untrusted code. Every template in the
project renders through `render_chat_template`: a sandboxed Jinja environment configured as
transformers configures its own (`transformers.utils.chat_template_utils`), so a template renders
here exactly as its authors tested it, and one that reaches for Python internals is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
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


# the one chat-template renderer ----------------------------------------------------------------


class TemplateRefused(UserError):
    """A chat template that is not run at all: it reaches outside the sandbox, or does not parse."""


class TemplateFailed(UserError):
    """A chat template that ran but failed on this conversation (its own raise_exception, a bug)."""


@lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandbox, as transformers builds it (trim_blocks, lstrip_blocks, loopcontrols, its
    tojson, raise_exception and strftime_now); built once, on first use, so importing this
    module stays cheap."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}…{% endgeneration %}` marks assistant text for training masks in
        transformers; rendering keeps its body unchanged."""

        tags: set[str] = {"generation"}  # noqa: RUF012 - jinja2 declares it per instance

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters, which no prompt wants.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=32)
def _compile(chat_template: str) -> Any:
    """Compiling a template costs ~15 ms; datasets render it twice per example."""
    return _environment().from_string(chat_template)


def template_error(origin: str, exc: Exception) -> UserError:
    """One line naming the template's origin and what is wrong with it (a Jinja error, or any
    error a template raised while rendering)."""
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

    if isinstance(exc, SecurityError):
        # "access to attribute '__init__' of 'Cycler' object is unsafe." -> what it reached for
        what = str(exc).removeprefix("access to ").removesuffix(".").removesuffix(" is unsafe")
        return TemplateRefused(f"chat template of {origin} tries to reach {what} outside the sandbox; refused")
    if isinstance(exc, TemplateSyntaxError):
        reason = " ".join(str(exc.message).split()).rstrip(".")
        return TemplateRefused(f"chat template of {origin} is not valid Jinja: {reason} (template line {exc.lineno}); "
                               "refused")
    message = exc.message if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
    return TemplateFailed(f"chat template of {origin} fails on this conversation: {' '.join(str(message).split())}")


def render_chat_template(chat_template: str, messages: list[dict[str, Any]], *, origin: str,
                         add_generation_prompt: bool = False, tools: list[dict[str, Any]] | None = None,
                         documents: list[dict[str, Any]] | None = None, **variables: Any) -> str:
    """Render a chat template in the sandbox with the variables transformers passes.

    `variables` are the tokenizer's special tokens (bos_token, eos_token, …) and any template
    options (enable_thinking, date_string, …). `origin` says where the template came from
    ("model X (tokenizer_config.json of owner/name)"); errors name it. A template that breaks
    out of the sandbox or does not parse raises `TemplateRefused`; one that fails on this
    conversation, `TemplateFailed`.
    """
    try:
        template = _compile(chat_template)
        return str(template.render(messages=messages, tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **variables))
    except Exception as exc:  # whatever the template does wrong is the template's fault: say whose
        raise template_error(origin, exc) from None


#: Conversations a probe render tries: the shapes most templates accept.
_PROBES: tuple[tuple[list[dict[str, str]], bool], ...] = (
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], False),
)


def check_chat_template(chat_template: str, *, origin: str, **variables: Any) -> None:
    """Refuse a template now rather than at the first chat turn: parse it and render a few
    probe conversations in the sandbox.

    Raises `TemplateRefused` if it does not parse or reaches outside the sandbox. A template
    that rejects a probe's shape (Gemma refuses system messages) is not refused for that; the
    sandbox still guards every later render, so a template that only misbehaves on some other
    conversation is refused then.
    """
    for messages, generation in _PROBES:
        try:
            render_chat_template(chat_template, messages, origin=origin,
                                 add_generation_prompt=generation, **variables)
        except TemplateFailed:
            continue


# prompt styles ---------------------------------------------------------------------------------


@dataclass
class PromptStyle:
    name: str
    chat_template: str
    stop: list[str] = field(default_factory=list)
    default_system: str = ""
    bos_token: str = ""
    eos_token: str = ""
    #: Where the template came from, for error messages: "model X (tokenizer_config.json of o/n)".
    origin: str = ""

    @property
    def source(self) -> str:
        return self.origin or f"prompt style '{self.name}'"

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.default_system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        return render_chat_template(self.chat_template, messages, origin=self.source,
                                    add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token)

    def check(self) -> PromptStyle:
        """Refuse a template that does not parse or leaves the sandbox (see `check_chat_template`)."""
        check_chat_template(self.chat_template, origin=self.source, bos_token=self.bos_token,
                            eos_token=self.eos_token)
        return self

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
    """The prompt style stored with a model (workbench.json), else its own chat template.

    The template is checked on loading (`PromptStyle.check`), so a hostile one is refused
    before any model weights are read.
    """
    meta_path = model_dir / "workbench.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        style = meta.get("prompt_style")
        if isinstance(style, dict):
            return PromptStyle(style["name"], style["chat_template"], style.get("stop", []),
                               style.get("default_system", ""), eos_token=meta.get("eos_token", ""),
                               origin=f"model {model_dir.name} ({meta_path})").check()
    found = find_chat_template({p.name: p for p in model_dir.iterdir() if p.is_file()})
    if found is None:
        return None
    template, source = found
    return PromptStyle("base", template, eos_token=tokenizer_eos(model_dir),
                       origin=f"model {model_dir.name} ({model_dir / source})").check()


def tokenizer_eos(model_dir: Path) -> str:
    """The EOS token's text from tokenizer_config.json, or ""."""
    tc = model_dir / "tokenizer_config.json"
    eos = json.loads(tc.read_text()).get("eos_token") if tc.exists() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) else ""


def find_chat_template(files: Mapping[str, Path]) -> tuple[str, str] | None:
    """(template, the file it came from) among a model's files (name -> local path), or None.

    tokenizer_config.json's `chat_template` (a string, or named templates: the default one),
    else chat_template.jinja, else chat_template.json. The template is not checked here: build a
    `PromptStyle` with an `origin` and call `check()`.
    """
    if "tokenizer_config.json" in files:
        template = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str) and template.strip():
            return template, "tokenizer_config.json"
    if "chat_template.jinja" in files:
        template = files["chat_template.jinja"].read_text(encoding="utf-8")
        if template.strip():
            return template, "chat_template.jinja"
    if "chat_template.json" in files:
        template = json.loads(files["chat_template.json"].read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str) and template.strip():
            return template, "chat_template.json"
    return None
