"""Tokenizer metadata and prompt format in exported GGUF files, checked against real llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_TEXT, make_tiny_model, tiny_llama_config
from tests.family_tokenizers import DECOMPOSED_TEXT, FAMILIES, PROBE_TEXTS, build_family_tokenizer
from workbench.errors import UserError


def _model_with_tokenizer(root: Path, tok_dir: Path, n_vocab: int, style: str = "chatml") -> Path:
    import torch
    from litgpt import GPT

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    config = tiny_llama_config(n_vocab)
    torch.manual_seed(0)
    eos = json.loads((tok_dir / "tokenizer_config.json").read_text())["eos_token"]
    return save_model_dir(root / "model", GPT(config).state_dict(), config, tokenizer_dir=tok_dir,
                          meta={"prompt_style": get_style(style, eos_token=eos).to_json(), "eos_token": eos})


def _bpe_tokenizer(out: Path, pre_tokenizer) -> Path:
    """A byte-level BPE tokenizer like a downloaded one, with the given pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from workbench_export.verify import TRICKY_TEXTS

    out.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT, *TRICKY_TEXTS] * 10, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "add_bos_token": False}))
    return out


def _pre_tokenizers():
    from tokenizers import Regex, pre_tokenizers
    from workbench_export.tokenizer_meta import _LLAMA3, _QWEN2

    def split(pattern: str):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    return {
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "qwen2": split(_QWEN2),
        "dbrx": split(_LLAMA3),  # Llama 3's pattern without its ignore_merges (cl100k)
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    }


def _vocab_only(path: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("pre", ["gpt-2", "qwen2", "dbrx", "smollm"])
def test_byte_level_bpe_tokenizers_agree_with_llama_cpp_on_tricky_strings(tmp_path, pre):
    from litgpt import Tokenizer
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.verify import TRICKY_TEXTS, tokenizer_agreement

    tok_dir = _bpe_tokenizer(tmp_path / "tok", _pre_tokenizers()[pre])
    n_vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])
    model = _model_with_tokenizer(tmp_path, tok_dir, n_vocab)
    info = write_gguf(model, tmp_path / "m.gguf", "f32")

    assert info["tokenizer"] == {"model": "gpt2", "pre": pre}
    llm = _vocab_only(tmp_path / "m.gguf")
    ours = Tokenizer(model)
    assert tokenizer_agreement(ours, llm, TRICKY_TEXTS, chat_text="<|im_start|>user\nhi<|im_end|>\n") == []
    # The special tokens are control tokens, and EOS/BOS are the ones the tokenizer config names.
    assert llm.token_eos() == ours.token_to_id("<|im_end|>")
    assert llm.token_bos() == ours.token_to_id("<|endoftext|>")


def test_pre_tokenizer_without_llama_cpp_equivalent_is_refused(tmp_path):
    from tokenizers import pre_tokenizers
    from workbench_export.tokenizer_meta import check_tokenizer

    tok_dir = _bpe_tokenizer(tmp_path / "tok", pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]))
    with pytest.raises(UserError, match=r"tokenizer\.json: pre-tokenizer .* supported: ByteLevel"):
        check_tokenizer(tok_dir)
    prefixed = _bpe_tokenizer(tmp_path / "tok2", pre_tokenizers.ByteLevel(add_prefix_space=True))
    with pytest.raises(UserError, match="adds a prefix space"):
        check_tokenizer(prefixed)


def _spm_model(root: Path) -> Path:
    spm = pytest.importorskip("sentencepiece")
    import io

    from workbench_export.verify import TRICKY_TEXTS

    tok_dir = root / "spm"
    tok_dir.mkdir(parents=True)
    buf = io.BytesIO()
    # Llama's own settings: BPE with byte fallback, identity normalisation, spaces kept.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((SAMPLE_TEXT + "\n".join(TRICKY_TEXTS)).splitlines() * 20), model_writer=buf,
        model_type="bpe", vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False, minloglevel=2,
    )
    (tok_dir / "tokenizer.model").write_bytes(buf.getvalue())
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>"}))
    n_vocab = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model")).vocab_size()
    return _model_with_tokenizer(root, tok_dir, n_vocab, style="alpaca")


def test_sentencepiece_model_matches_litgpt_and_tokenizes_like_llama_cpp(tmp_path):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.verify import TRICKY_TEXTS, Reference, tokenizer_agreement, verify_gguf

    model = _spm_model(tmp_path)
    info = write_gguf(model, tmp_path / "spm.gguf", "f32")
    ref = Reference.build(model, heldout_text=SAMPLE_TEXT, max_ppl_tokens=256)
    check = verify_gguf(tmp_path / "spm.gguf", ref, exact=True)

    assert info["tokenizer"]["model"] == "llama"
    assert check.passed, check.problems
    assert ref.probe_ids[0][0] == ref.tokenizer.bos_id  # LitGPT adds BOS for this tokenizer...
    llm = _vocab_only(tmp_path / "spm.gguf")
    assert llm.tokenize(b"hi", add_bos=True)[0] == ref.tokenizer.bos_id  # ...and so does llama.cpp
    assert tokenizer_agreement(ref.tokenizer, llm, TRICKY_TEXTS) == []


def test_sentencepiece_without_byte_fallback_is_refused(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    import io

    from workbench_export.tokenizer_meta import read_tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SAMPLE_TEXT.splitlines() * 20), model_writer=buf,
                                   model_type="bpe", vocab_size=120, minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="byte_fallback=True"):
        read_tokenizer(tmp_path, 512)


@pytest.mark.parametrize("style_name", ["chatml", "alpaca"])
def test_chat_template_makes_llama_cpp_render_the_trained_prompt_format(tmp_path, style_name):
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from workbench_export.gguf_writer import write_gguf

    from workbench.prompts import get_style, style_for_model

    model = make_tiny_model(tmp_path / "m")
    meta = json.loads((model / "workbench.json").read_text())
    meta["prompt_style"] = get_style(style_name).to_json()
    (model / "workbench.json").write_text(json.dumps(meta))
    write_gguf(model, tmp_path / "m.gguf", "f16")

    llm = Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=512, verbose=False)
    assert llm.chat_format == "chat_template.default"
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|endoftext|>",
                                    bos_token="<|endoftext|>")
    # Exactly the text the model saw in training, default system prompt included.
    assert formatter(messages=messages).prompt == style_for_model(model).render(messages)
    reply = llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0.0)
    assert reply["choices"][0]["message"]["role"] == "assistant"


def test_modelfile_carries_the_prompt_format_to_ollama():
    from workbench_export.templates import _PROBE, _assemble, _render, _role_parts, modelfile

    from workbench.prompts import PromptStyle, get_style

    for name in ("chatml", "alpaca"):
        style = get_style(name)
        text = modelfile("m-q4_k_m.gguf", style, "<|endoftext|>")
        assert "FROM ./m-q4_k_m.gguf" in text and 'TEMPLATE """{{ range $i, $_ := .Messages }}' in text
        for stop in style.stop:
            assert f"PARAMETER stop {json.dumps(stop)}" in text
        assert _assemble(_role_parts(style), _PROBE) == _render(style, _PROBE, True)
    assert 'SYSTEM """Below is an instruction' in modelfile("m.gguf", get_style("alpaca"), "</s>")
    # A template that drops system messages has no per-message translation: no TEMPLATE line.
    odd = PromptStyle("base", "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                              "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    text = modelfile("m.gguf", odd, "</s>")
    assert "TEMPLATE" not in text and "tokenizer.chat_template" in text


def _family_model(root: Path, fam, n_vocab: int, *, eot_always: bool = False) -> Path:
    """A tiny LitGPT model carrying a family's tokenizer and, with no prompt style of its own, that
    tokenizer's chat template. `eot_always` makes every greedy step pick the end-of-turn token:
    the residual stream is the embedding alone, whose first feature is 1 for every token, and
    only the end-of-turn row of the head reads it."""
    import torch
    from litgpt import GPT

    from workbench.ml.checkpoint import save_model_dir

    config = tiny_llama_config(n_vocab)
    torch.manual_seed(0)
    state = GPT(config).state_dict()
    if eot_always:
        eot = fam.hf().convert_tokens_to_ids(fam.eot)
        state["transformer.wte.weight"][:, 0] = 1.0
        for name, value in state.items():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                value.zero_()
        state["transformer.ln_f.weight"].zero_()
        state["transformer.ln_f.weight"][0] = 1.0
        state["lm_head.weight"].zero_()
        state["lm_head.weight"][eot, 0] = 10.0
    return save_model_dir(root / "model", state, config, tokenizer_dir=fam.path, meta={})


def _detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's own detokenizer, special tokens shown (llama-cpp-python's `detokenize` joins
    token pieces instead, keeping the SentencePiece prefix space that llama.cpp removes)."""
    import ctypes

    import llama_cpp

    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(64 * len(ids) + 16)
    n = llama_cpp.llama_detokenize(llm._model.vocab, tokens, len(ids), buf, len(buf), False, True)
    return buf.raw[:n].decode("utf-8", errors="replace")


def _tokenization_mismatches(fam, llm, texts) -> list[tuple[str, str]]:
    """Where llama.cpp and the HF tokenizer part: with and without BOS, special tokens in the text
    recognised or taken as plain text, and decoding back."""
    hf = fam.hf()
    bad: list[tuple[str, str]] = []
    for text in texts:
        data = text.encode()
        if llm.tokenize(data, add_bos=True, special=True) != hf.encode(text, add_special_tokens=True):
            bad.append(("with BOS", text))
        ids = hf.encode(text, add_special_tokens=False)
        if llm.tokenize(data, add_bos=False, special=True) != ids:
            bad.append(("without BOS", text))
        plain = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if llm.tokenize(data, add_bos=False, special=False) != plain:
            bad.append(("special tokens as text", text))
        # As generation streams it: token pieces joined, against transformers' incremental decode
        # of the text the tokens spell (no space clean-up, which is for whole texts).
        prefix = hf.encode("x", add_special_tokens=False)
        raw = hf.decode(prefix + ids, clean_up_tokenization_spaces=False)
        if llm.detokenize(ids, special=True).decode("utf-8", errors="replace") != \
                raw[len(hf.decode(prefix, clean_up_tokenization_spaces=False)):]:
            bad.append(("streamed decode", text))
        # Whole text at once; llama.cpp tidies spaces before punctuation for some pre-tokenizers
        # whatever the tokenizer's clean_up_tokenization_spaces says (a known difference).
        if (fam.pre, hf.clean_up_tokenization_spaces) not in (("dbrx", False), ("gpt-2", False)) \
                and _detokenize(llm, ids) != hf.decode(ids):
            bad.append(("decode", text))
    return bad


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_tokenizer_reaches_llama_cpp_exactly(tmp_path, family):
    from llama_cpp import Llama
    from workbench_export.gguf_writer import write_gguf

    fam = build_family_tokenizer(family, tmp_path / "tok")
    hf = fam.hf()
    model = _family_model(tmp_path, fam, fam.vocab_size(), eot_always=True)
    info = write_gguf(model, tmp_path / "m.gguf", "f32")

    assert info["tokenizer"] == {"model": fam.model, "pre": fam.pre}
    llm = Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=256, verbose=False)
    texts = [*PROBE_TEXTS, fam.chat_sample]
    if hf.backend_tokenizer.normalizer is None or family in ("llama2", "mistral", "phi3", "gemma"):
        texts.append(DECOMPOSED_TEXT)  # llama.cpp does not NFC-normalise (Qwen2's tokenizer does)
    assert _tokenization_mismatches(fam, llm, texts) == []
    assert llm.metadata["tokenizer.chat_template"] == hf.chat_template
    assert llm.token_eos() == hf.eos_token_id
    if hf.bos_token_id is not None:
        assert llm.token_bos() == hf.bos_token_id
    assert int(llm.metadata["tokenizer.ggml.eot_token_id"]) == hf.convert_tokens_to_ids(fam.eot)
    for kind, key in (("pad", "padding"), ("unk", "unknown")):
        if getattr(hf, f"{kind}_token_id") is not None:
            assert int(llm.metadata[f"tokenizer.ggml.{key}_token_id"]) == getattr(hf, f"{kind}_token_id"), kind
    # The model always picks the end-of-turn token: chat ends there, with nothing shown.
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0)
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["choices"][0]["message"]["content"] == ""


def _edit_tokenizer_json(tok_dir: Path, edit) -> Path:
    path = tok_dir / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return tok_dir


def _first_added(data: dict, content: str) -> dict:
    return next(a for a in data["added_tokens"] if a["content"] == content)


@pytest.mark.parametrize(("family", "edit", "message"), [
    ("qwen2", lambda d: d.update(normalizer={"type": "Lowercase"}),
     r"tokenizer\.json: normalizer Lowercase has no llama\.cpp equivalent"),
    ("llama3", lambda d: _first_added(d, "<|eot_id|>").update(lstrip=True),
     r"tokenizer\.json: added token '<\|eot_id\|>' strips whitespace to its left"),
    ("llama3", lambda d: _first_added(d, "<|eot_id|>").update(rstrip=True),
     r"added token '<\|eot_id\|>' strips whitespace to its right \(rstrip\) but '<\|begin_of_text\|>' does not"),
    ("qwen2", lambda d: d["model"].update(ignore_merges=True),
     r"ignore_merges is set with the qwen2 pre-tokenizer"),
    # Metaspace leaves " Hi" after [INST] as "▁Hi" where llama.cpp (and SentencePiece) make "▁▁Hi".
    ("mistral", lambda d: d.update(normalizer=None, pre_tokenizer={
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}),
     r"tokenizer\.json: Metaspace pre-tokenizer with prepend_scheme 'first'"),
    ("llama2", lambda d: d.update(normalizer=None, pre_tokenizer={
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}),
     r"tokenizer\.json: Metaspace pre-tokenizer with prepend_scheme 'always'"),
    ("gemma", lambda d: d["model"].update(type="Unigram"),
     r"tokenizer\.json: a SentencePiece Unigram model"),
])
def test_tokenizer_llama_cpp_cannot_reproduce_is_refused(tmp_path, family, edit, message):
    from workbench_export.tokenizer_meta import check_tokenizer

    fam = build_family_tokenizer(family, tmp_path / "tok")
    with pytest.raises(UserError, match=message):
        check_tokenizer(_edit_tokenizer_json(fam.path, edit))


def test_sentencepiece_files_that_disagree_on_the_prefix_space_are_refused(tmp_path):
    from workbench_export.tokenizer_meta import read_tokenizer

    gemma = build_family_tokenizer("gemma", tmp_path / "gemma")
    llama2 = build_family_tokenizer("llama2", tmp_path / "llama2")
    (gemma.path / "tokenizer.model").write_bytes((llama2.path / "tokenizer.model").read_bytes())
    with pytest.raises(UserError, match="disagree on the space before text"):
        read_tokenizer(gemma.path, 1024)


def test_export_refuses_an_unreproducible_tokenizer_in_one_line_and_writes_nothing(cli, tmp_path, workspace):
    import shutil

    from workbench.context import Context
    from workbench.store import Store

    fam = build_family_tokenizer("qwen2", tmp_path / "tok")
    _edit_tokenizer_json(fam.path, lambda d: d.update(normalizer={"type": "NFKC"}))
    model = _family_model(tmp_path, fam, fam.vocab_size())
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model, staged)
    art = ctx.register("model", staged, name="tiny-nfkc")

    proc = cli("export", art.id, "--gguf")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "normalizer NFKC has no llama.cpp equivalent" in lines[0], proc.stderr
    assert not (workspace / "runs").exists()
    assert not list(workspace.rglob("*.gguf"))


def test_model_named_like_phi3_without_its_tokenizer_keeps_whitespace_after_special_tokens(tmp_path):
    from workbench_export.gguf_writer import write_gguf

    fam = build_family_tokenizer("llama2", tmp_path / "tok")
    model = _family_model(tmp_path, fam, fam.vocab_size())
    # llama.cpp makes special tokens swallow the whitespace after them in any model named Phi-3.
    write_gguf(model, tmp_path / "m.gguf", "f32", name="Phi3-mini-retrained")
    llm = _vocab_only(tmp_path / "m.gguf")
    assert _tokenization_mismatches(fam, llm, ["<s>[INST] Hi</s>\n  next</s> x"]) == []
    assert "phi3" not in llm.metadata["general.name"].lower()


@pytest.mark.parametrize("family", ["qwen2", "llama3", "gemma", "phi3"])
def test_export_verification_accepts_each_family_tokenizer(tmp_path, family):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.verify import Reference, verify_gguf

    fam = build_family_tokenizer(family, tmp_path / "tok")
    model = _family_model(tmp_path, fam, fam.vocab_size())
    write_gguf(model, tmp_path / "m.gguf", "f32")
    ref = Reference.build(model, heldout_text=SAMPLE_TEXT, max_ppl_tokens=128)
    check = verify_gguf(tmp_path / "m.gguf", ref, exact=True)
    assert check.passed, check.problems
