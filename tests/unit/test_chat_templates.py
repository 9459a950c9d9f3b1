"""The one chat-template renderer: real templates render as transformers renders them, the
built-in styles render as they always did, and templates that reach outside the sandbox are
refused before they can do anything.

The real templates are llama.cpp's copies of the models' own (tests/fixtures/chat_templates);
transformers' `apply_chat_template` on a tokenizer built here, offline, is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workbench.prompts import (
    ALPACA,
    CHATML,
    PromptStyle,
    TemplateFailed,
    TemplateRefused,
    get_style,
    render_chat_template,
    style_for_model,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

#: template file -> (bos, eos, supports tool calls)
TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", True),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", True),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>", True),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>", True),
    "HuggingFaceTB-SmolLM3-3B.jinja": ("", "<|im_end|>", True),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>", False),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>", False),
}

SYSTEM = {"role": "system", "content": "You are terse.\nAnswer in one line."}
USER = {"role": "user", "content": "What is 2 + 3?"}
ASSISTANT = {"role": "assistant", "content": "5."}
FOLLOW_UP = {"role": "user", "content": "  And 2 * 3? {{ not a template }} <|im_end|>  "}

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "one turn": [USER],
    "system": [SYSTEM, USER],
    "multi-turn": [USER, ASSISTANT, FOLLOW_UP],
    "multi-turn with system": [SYSTEM, USER, ASSISTANT, FOLLOW_UP],
    "ends with the assistant": [SYSTEM, USER, ASSISTANT],
}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "Is it warm in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "name": "get_weather", "content": "{\"temperature_c\": 24}"},
    {"role": "assistant", "content": "Yes, 24 °C."},
    {"role": "user", "content": "Thanks!"},
]


@pytest.fixture(scope="module")
def reference_tokenizer() -> Any:
    """A transformers tokenizer whose only special tokens are set per test, like a model's."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    def make(bos: str, eos: str, template: str) -> Any:
        specials = {"bos_token": bos} if bos else {}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"x": 0})), eos_token=eos, **specials)
        tok.chat_template = template
        return tok

    return make


def outcome(render: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """("ok", text) or ("error", message) of one rendering."""
    try:
        return "ok", render(*args, **kwargs)
    except Exception as exc:  # transformers raises jinja2's TemplateError, we TemplateFailed
        message = getattr(exc, "message", None) or str(exc)
        return "error", message


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_real_templates_render_exactly_as_transformers_renders_them(name, reference_tokenizer):
    bos, eos, with_tools = TEMPLATES[name]
    template = (FIXTURES / name).read_text(encoding="utf-8")
    reference = reference_tokenizer(bos, eos, template)
    style = PromptStyle("base", template, bos_token=bos, eos_token=eos, origin=f"model {name}")
    cases: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
        (label, messages, {}) for label, messages in CONVERSATIONS.items()]
    if with_tools:
        cases.append(("tool calls", TOOL_CONVERSATION, {"tools": [WEATHER_TOOL]}))
    if "Qwen3" in name or "SmolLM3" in name:
        cases.append(("thinking off", CONVERSATIONS["multi-turn with system"], {"enable_thinking": False}))

    rendered = 0
    for label, messages, extra in cases:
        for generation in (True, False):
            theirs = outcome(reference.apply_chat_template, messages, tokenize=False,
                             add_generation_prompt=generation, **extra)
            if extra:  # tools and template options: the renderer itself
                ours = outcome(render_chat_template, template, messages, origin=style.source,
                               add_generation_prompt=generation, bos_token=bos, eos_token=eos, **extra)
            else:  # what chat, serve, training and export call
                ours = outcome(style.render, messages, add_generation_prompt=generation)
            assert ours[0] == theirs[0], (label, generation, ours, theirs)
            if theirs[0] == "ok":
                assert ours[1] == theirs[1], (label, generation)
                rendered += 1
            else:  # the template's own raise_exception, with its message, in one line
                assert theirs[1] in ours[1], (label, generation, ours, theirs)
    # Every conversation renders, except that Gemma refuses the three with a system prompt.
    assert rendered == 2 * len(cases) - (6 if "gemma" in name else 0)
    if with_tools:  # the tool conversation itself rendered and carries the call
        text = render_chat_template(template, TOOL_CONVERSATION, origin=name, tools=[WEATHER_TOOL],
                                    add_generation_prompt=True, bos_token=bos, eos_token=eos)
        assert "Paris" in text and "24" in text


def test_a_template_that_rejects_a_conversation_says_so_in_one_line():
    gemma = (FIXTURES / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    style = PromptStyle("base", gemma, bos_token="<bos>", origin="model gemma (tokenizer_config.json of g/gemma)")
    with pytest.raises(TemplateFailed) as err:
        style.render([SYSTEM, USER])
    assert str(err.value) == ("chat template of model gemma (tokenizer_config.json of g/gemma) "
                              "fails on this conversation: System role not supported")
    style.check()  # a probe it rejects is not a reason to refuse the model


# ----------------------------------------------------------------------------------------------
# the built-in styles render exactly as before the sandbox


def _plain_jinja(template: str, messages: list[dict[str, Any]], generation: bool, eos: str) -> str:
    """The renderer the built-in styles were trained and exported with: plain Jinja defaults."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation,
                                            bos_token="", eos_token=eos)


@pytest.mark.parametrize("name", ["chatml", "alpaca"])
def test_builtin_styles_render_as_they_always_did(name):
    style = get_style(name, eos_token="<|endoftext|>")
    template = {"chatml": CHATML, "alpaca": ALPACA}[name]
    for convo in CONVERSATIONS.values():
        for generation in (True, False):
            messages = convo if style.default_system == "" or convo[0]["role"] == "system" \
                else [{"role": "system", "content": style.default_system}, *convo]
            assert style.render(convo, add_generation_prompt=generation) == \
                _plain_jinja(template, messages, generation, "<|endoftext|>")


# ----------------------------------------------------------------------------------------------
# the sandbox


def payloads(marker: Path) -> dict[str, str]:
    """Templates that create `marker` (a directory) if Python internals are reachable."""
    templates = {
        "cycler": "{{ cycler.__init__.__globals__.os.makedirs(MARKER) }}",
        "joiner": "{% for m in messages %}{{ m.content }}{% endfor %}{{ joiner.__init__.__globals__.os.makedirs(MARKER) }}",
        "lipsum": "{{ lipsum.__globals__['os'].makedirs(MARKER) }}",
        "mro": ("{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
                "{{ c()._module.__builtins__['__import__']('os').makedirs(MARKER) }}{% endif %}{% endfor %}"),
    }
    return {name: t.replace("MARKER", repr(str(marker))) for name, t in templates.items()}


def test_the_payloads_are_real_outside_the_sandbox(tmp_path):
    """Control: each payload does create its marker under plain Jinja, so the test below can fail."""
    import jinja2

    for name, template in payloads(tmp_path / "x").items():
        marker = tmp_path / name
        jinja2.Environment().from_string(template.replace(str(tmp_path / "x"), str(marker))).render(messages=[USER])
        assert marker.is_dir(), name


def test_templates_that_reach_outside_the_sandbox_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for name, template in payloads(marker).items():
        style = PromptStyle("base", template, origin="model evil (workbench.json)")
        with pytest.raises(TemplateRefused) as err:
            style.check()
        message = str(err.value)
        assert message.startswith("chat template of model evil (workbench.json) tries to reach "), name
        assert message.endswith(" outside the sandbox; refused") and "\n" not in message, name
        with pytest.raises(TemplateRefused):
            style.render([USER])
    assert not marker.exists()


def test_a_template_that_hides_from_the_probe_is_refused_when_it_renders(tmp_path):
    marker = tmp_path / "pwned"
    template = CHATML + "{% if messages | length > 6 %}" + payloads(marker)["cycler"] + "{% endif %}"
    style = PromptStyle("base", template, origin="model sly (workbench.json)").check()  # the probe sees nothing
    assert style.render([USER]).startswith("<|im_start|>user")
    with pytest.raises(TemplateRefused, match="tries to reach attribute '__init__'"):
        style.render([USER, ASSISTANT] * 4)
    assert not marker.exists()


def test_a_template_cannot_change_the_conversation_it_is_given():
    messages = [dict(USER)]
    template = "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages | length }}"
    with pytest.raises(TemplateRefused, match="append"):
        render_chat_template(template, messages, origin="model m")
    assert messages == [USER]


def test_a_template_with_a_syntax_error_gets_one_line(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    style = {"name": "base", "chat_template": "{% for m in messages %}{{ m.content }", "stop": []}
    (model / "workbench.json").write_text(json.dumps({"prompt_style": style}))
    with pytest.raises(TemplateRefused) as err:
        style_for_model(model)
    assert str(err.value).startswith(f"chat template of model m ({model / 'workbench.json'}) is not valid Jinja: ")
    assert str(err.value).endswith("(template line 1); refused") and "\n" not in str(err.value)


def test_style_for_model_refuses_a_hostile_template_on_loading(tmp_path):
    marker = tmp_path / "pwned"
    model = tmp_path / "m"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "</s>", "chat_template": payloads(marker)["cycler"]}))
    with pytest.raises(TemplateRefused, match=r"chat template of model m \(.*tokenizer_config.json\) tries"):
        style_for_model(model)
    assert not marker.exists()


def test_render_passes_what_transformers_passes():
    template = ("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | tojson }}|"
                "{{ documents is none }}|{{ enable_thinking }}|{{ strftime_now('%Y') | length }}|"
                "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}|"
                "{% generation %}kept{% endgeneration %}")
    text = render_chat_template(template, [{"role": "user", "content": "é<&>"}, ASSISTANT], origin="m",
                                add_generation_prompt=True, tools=[{"name": "f"}], bos_token="<s>",
                                eos_token="</s>", enable_thinking=False)
    assert text == '<s>|</s>|True|[{"name": "f"}]|True|False|4|é<&>|kept'
