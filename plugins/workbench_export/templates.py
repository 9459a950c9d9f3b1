"""The model's prompt format, carried into GGUF metadata and an Ollama Modelfile.

llama.cpp (and llama-cpp-python's chat completion) renders `tokenizer.chat_template` with Jinja,
so the model's own template is written there, with its default system prompt folded in so it
behaves like `PromptStyle.render`. Every rendering here goes through the sandboxed renderer in
`workbench.prompts`; a template that leaves the sandbox stops the export. Ollama speaks Go templates instead; the translation below
renders the Jinja template with marker contents to find each role's prefix and suffix, and is
only written when the translated template reproduces the Jinja rendering of a whole conversation.
"""

from __future__ import annotations

import json
from typing import Any

from workbench.prompts import PromptStyle, TemplateFailed, render_chat_template

_MARK = "\x00CONTENT\x00"
_PROBE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Add 2 and 3.\nThen stop."},
]


def gguf_chat_template(style: PromptStyle | None) -> str | None:
    """The Jinja template to store as `tokenizer.chat_template`."""
    if style is None:
        return None
    if not style.default_system:
        return style.chat_template
    default = json.dumps(style.default_system)  # a JSON string is a valid Jinja string literal
    return (
        "{% if not messages or messages[0]['role'] != 'system' %}"
        f"{{% set messages = [{{'role': 'system', 'content': {default}}}] + messages %}}"
        "{% endif %}" + style.chat_template
    )


def _render(style: PromptStyle, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """The bare template (no default system prompt): what the GGUF's template renders."""
    return render_chat_template(style.chat_template, messages, origin=style.source,
                                add_generation_prompt=generation_prompt,
                                bos_token=style.bos_token, eos_token=style.eos_token)


def _role_parts(style: PromptStyle) -> dict[str, Any] | None:
    """Global prefix, (prefix, suffix) per role and the generation prompt; None if not per-message."""
    try:
        head = _render(style, [], False)
        parts: dict[str, Any] = {"head": head}
        for role in ("system", "user", "assistant"):
            text = _render(style, [{"role": role, "content": _MARK}], False)
            if not text.startswith(head) or text.count(_MARK) != 1:
                return None
            parts[role] = tuple(text[len(head):].split(_MARK))
        plain = _render(style, [{"role": "user", "content": _MARK}], False)
        prompted = _render(style, [{"role": "user", "content": _MARK}], True)
    except TemplateFailed:  # a template that needs more than messages cannot be translated
        return None
    if not prompted.startswith(plain):
        return None
    parts["generation"] = prompted[len(plain):]
    return parts


def _assemble(parts: dict[str, Any], messages: list[dict[str, str]], *, continue_last: bool = True) -> str:
    """What the Go template below renders, in Python: used to check the translation.

    Like Ollama's own templates, a conversation ending with an assistant turn is left open so
    the model continues that turn; `continue_last=False` closes it, as the Jinja template does.
    """
    out = parts["head"]
    for i, m in enumerate(messages):
        prefix, suffix = parts[m["role"]]
        last = i == len(messages) - 1
        out += prefix + m["content"]
        if not (last and m["role"] == "assistant" and continue_last):
            out += suffix
        if last and m["role"] == "user":
            out += parts["generation"]
    return out


def _go_text(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(style: PromptStyle | None) -> str | None:
    """An Ollama Go template equivalent to the style's Jinja template, or None."""
    if style is None:
        return None
    parts = _role_parts(style)
    if parts is None:
        return None
    for convo in (_PROBE, _PROBE[1:], _PROBE[:3]):
        expected = _render(style, convo, convo[-1]["role"] == "user")
        if _assemble(parts, convo, continue_last=False) != expected:
            return None
    s_pre, s_suf = map(_go_text, parts["system"])
    u_pre, u_suf = map(_go_text, parts["user"])
    a_pre, a_suf = map(_go_text, parts["assistant"])
    template = (
        _go_text(parts["head"])
        + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + f'{{{{ if eq .Role "system" }}}}{s_pre}{{{{ .Content }}}}{s_suf}'
        + f'{{{{ else if eq .Role "user" }}}}{u_pre}{{{{ .Content }}}}{u_suf}'
        + f"{{{{ if $last }}}}{_go_text(parts['generation'])}{{{{ end }}}}"
        + f'{{{{ else if eq .Role "assistant" }}}}{a_pre}{{{{ .Content }}}}{{{{ if not $last }}}}{a_suf}{{{{ end }}}}'
        + "{{ end }}{{ end }}"
    )
    return None if '"""' in template else template


def stop_strings(style: PromptStyle | None, eos_token: str) -> list[str]:
    stops = list(style.stop) if style is not None else []
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    return stops


def modelfile(gguf_name: str, style: PromptStyle | None, eos_token: str) -> str:
    """An Ollama Modelfile that sits beside `gguf_name`."""
    lines = ["# Ollama Modelfile: `ollama create NAME -f Modelfile` in this directory", f"FROM ./{gguf_name}"]
    template = ollama_template(style)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    elif style is not None:
        lines.append("# This chat template has no exact Go-template translation; Ollama reads the")
        lines.append("# Jinja template stored in the GGUF (tokenizer.chat_template) instead.")
    if style is not None and style.default_system and '"""' not in style.default_system:
        lines.append(f'SYSTEM """{style.default_system}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stop_strings(style, eos_token)]
    return "\n".join(lines) + "\n"
