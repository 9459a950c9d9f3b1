"""Tiny tokenizers shaped like each model family's published one, for tests.

Each builder writes a directory like a downloaded model's tokenizer files: `tokenizer.json`
with the family's normalizer, pre-tokenizer (split regex, digit splitting), model type (byte-level
BPE, or SentencePiece BPE with byte fallback, then also `tokenizer.model`), decoder,
post-processor and added/special tokens at the family's relative positions, and a
`tokenizer_config.json` with its special tokens, BOS/EOS flags and a chat template in the
family's format and its published `tokenizer_class`. Vocabularies are a few hundred tokens,
trained in well under a second; `FamilyTokenizer.hf()` loads them offline with transformers as
the reference. Known differences from the real files: tiny vocabularies, a handful of reserved
tokens instead of hundreds, and chat templates reduced to their turn format.

    fam = build_family_tokenizer("qwen2", tmp_path / "tok")
    fam.path, fam.eot, fam.pre  # directory, end-of-turn token, expected tokenizer.ggml.pre
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SAMPLE_TEXT

# The split patterns exactly as the families' tokenizer.json files carry them.
GPT4_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3, OLMo 2 and Phi-4 (cl100k)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Strings where tokenizers disagree: code, whitespace runs, tabs and newlines, digits and long
# numbers, emoji, CJK, accents, contractions.
PROBE_TEXTS = (
    "Hello world",
    "  two leading spaces, three trailing   ",
    "line one\nline two\n\n\ttabbed\r\nwindows line\n",
    "\t\ttabs\t and  \n\n\n   newlines",
    "digits 0 12 345 6789 3.14159 1,000,000 2024-06-01 +42 -7 1234567890123",
    "Unicode: café naïve Zürich 東京 Привет мир ελληνικά",
    "emoji 🙂👍🏽 👩\u200d💻 🇫🇷",
    "中文分词测试，日本語のテキスト。한국어",
    "def add(a, b):\n    return a + b  # sum\n\n\nclass A:\n\tpass\n",
    "Don't stop; it's fine, isn't it? We'll see. I'M LOUD, YOU'RE NOT, they'd've",
    "{\"key\": [1, 2.5, null], 'x': \"y\"}",
    "   ",
    "a",
    " leading space",
    "\n =",
    "' era",
    "!!!!!! ... ??",
    "3 33 333 3333 33333 333333 3333333",
    "ied 4 ½ months, Äpfel, Cửa Việt, ខ្មែរភាសា",
    "    Hello\n    Hello\n\n \n\n\n \t\t \n",
    "🚀 (normal) 😶\u200d🌫️ (joined) ✅ 🦙.cpp",
    "Hi, y'all! 😁 ?我想在apple工作1314151天～",
)
# Decomposed accents: NFC-normalising tokenizers (Qwen2) and llama.cpp part ways here.
DECOMPOSED_TEXT = "combining e\u0301 vs é"

_CORPUS = [SAMPLE_TEXT, *PROBE_TEXTS, DECOMPOSED_TEXT,
           "The model answers questions. It counts 1 2 3 and writes code.\n",
           "user: hi there\nassistant: hello, how can I help?\n"]

_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)
_OLMO2 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
_PHI4 = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class FamilyTokenizer:
    family: str
    path: Path
    model: str  # tokenizer.ggml.model llama.cpp should get: "gpt2" or "llama"
    pre: str  # tokenizer.ggml.pre llama.cpp should get
    eot: str  # the token that ends a turn in the chat template
    chat_sample: str  # text with special tokens inside, as a rendered chat has them

    def hf(self):
        """The tokenizer as transformers loads it: the reference llama.cpp is checked against."""
        # PreTrainedTokenizerFast runs tokenizer.json as published; transformers 5's Llama and
        # Gemma classes rebuild their pipeline from vocab and merges instead.
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(self.path), local_files_only=True)

    def vocab_size(self) -> int:
        """Token rows a model needs for this tokenizer (added tokens included)."""
        return len(self.hf().get_vocab())


def _write_config(out: Path, **config: object) -> None:
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _byte_level(out: Path, *, split: str | None, digits: bool = False, nfc: bool = False,
                ignore_merges: bool = False, leading: list[str] = (), trailing: list[str] = (),
                plain: list[str] = (), bos_first: str | None = None, vocab_size: int = 520) -> None:
    """A byte-level BPE like GPT-2's descendants: `leading` specials take the first ids (SmolLM),
    `trailing` specials and `plain` (non-special) added tokens follow the learned vocabulary."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if split is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(leading), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in trailing])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if bos_first is not None:
        bos_id = tok.token_to_id(bos_first)
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos_first}:0 $A:0", pair=f"{bos_first}:0 $A:0 {bos_first}:1 $B:1",
            special_tokens=[(bos_first, bos_id)])])
    else:
        tok.post_processor = byte_level
    tok.save(str(out / "tokenizer.json"))


def _spm_pieces(out: Path, *, dummy_prefix: bool, ids: dict[str, int], specials: dict[str, str],
                user_defined: list[str] = (),
                control: list[str] = (), vocab_size: int = 640) -> list[str]:
    """Train a SentencePiece BPE with byte fallback the way Llama/Gemma were; returns its pieces."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter("\n".join(_CORPUS).splitlines() * 8), model_writer=buf, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=dummy_prefix, allow_whitespace_only_pieces=True,
        user_defined_symbols=list(user_defined), control_symbols=list(control), hard_vocab_limit=False,
        minloglevel=2, **{f"{k}_id": v for k, v in ids.items()},
        **{f"{k}_piece": p for k, p in specials.items()},
    )
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return [sp.id_to_piece(i) for i in range(sp.vocab_size())]


def _spm_family(out: Path, *, dummy_prefix: bool, specials: dict[str, str], ids: dict[str, int],
                user_defined: list[str] = (), control: list[str] = (),
                extra: list[tuple[str, bool]] = (), bos_first: bool = True, rstrip: tuple[str, ...] = ()) -> None:
    """SentencePiece `tokenizer.model` plus the `tokenizer.json` transformers converts it to: BPE
    with byte fallback whose merges follow the piece scores, every special piece an added token,
    `extra` (content, rstrip) added after the pieces (Phi-3's chat tokens)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    out.mkdir(parents=True, exist_ok=True)
    pieces = _spm_pieces(out, dummy_prefix=dummy_prefix, ids=ids, specials=specials, user_defined=user_defined, control=control)
    vocab = {p: i for i, p in enumerate(pieces)}
    special = set(specials.values()) | set(user_defined) | set(control)
    mergeable = {p: i for p, i in vocab.items()
                 if p not in special and not (p.startswith("<0x") and p.endswith(">") and len(p) == 6)}
    merges = sorted(
        ((i, vocab[p[:k]], vocab[p[k:]], p[:k], p[k:]) for p, i in mergeable.items()
         for k in range(1, len(p)) if p[:k] in mergeable and p[k:] in mergeable),
    )
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=specials["unk"],
                               fuse_unk=True, byte_fallback=True))
    if dummy_prefix:  # Llama 2's "legacy" normalizer: a space before every piece of text
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        strip = [decoders.Strip(" ", 1, 0)]
    else:
        tok.normalizer = normalizers.Replace(" ", "▁")
        strip = []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False, rstrip=p in rstrip)
                            for p in pieces if p in special])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=r) for t, r in extra])
    bos = specials["bos"]
    if bos_first:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    tok.save(str(out / "tokenizer.json"))


def _llama3(out: Path) -> FamilyTokenizer:
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(4)]
    _byte_level(out, split=GPT4_SPLIT, ignore_merges=True, bos_first="<|begin_of_text|>", trailing=[
        "<|begin_of_text|>", "<|end_of_text|>", *reserved[:2], "<|finetune_right_pad_id|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", *reserved[2:]])
    _write_config(out, tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>",
                  eos_token="<|eot_id|>", clean_up_tokenization_spaces=True, chat_template=_LLAMA3,
                  model_max_length=131072)
    return FamilyTokenizer("llama3", out, "gpt2", "llama-bpe", "<|eot_id|>",
                           "<|start_header_id|>user<|end_header_id|>\n\nHi 42!<|eot_id|>")


def _qwen(out: Path, thinking: bool) -> FamilyTokenizer:
    _byte_level(out, split=QWEN2_SPLIT, nfc=True, trailing=[
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|vision_start|>", "<|vision_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"],
        plain=["<tool_call>", "</tool_call>", *(["<think>", "</think>"] if thinking else [])])
    _write_config(out, tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>",
                  pad_token="<|endoftext|>", unk_token=None, add_prefix_space=False, errors="replace",
                  clean_up_tokenization_spaces=False, split_special_tokens=False, chat_template=_CHATML)
    return FamilyTokenizer("qwen3" if thinking else "qwen2", out, "gpt2", "qwen2", "<|im_end|>",
                           "<|im_start|>user\n<think>x</think>Hi 2024<|im_end|>\n<|im_start|>assistant\n")


def _smollm2(out: Path) -> FamilyTokenizer:
    leading = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
               "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
               "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
               "<empty_output>"]
    _byte_level(out, split=None, digits=True, leading=leading)
    _write_config(out, tokenizer_class="GPT2Tokenizer", bos_token="<|im_start|>", eos_token="<|im_end|>",
                  pad_token="<|im_end|>", unk_token="<|endoftext|>", add_prefix_space=False,
                  clean_up_tokenization_spaces=False, chat_template=_CHATML)
    return FamilyTokenizer("smollm2", out, "gpt2", "smollm", "<|im_end|>",
                           "<|im_start|>user\nAdd 123 and 4567<|im_end|>\n<|im_start|>assistant\n")


def _olmo2(out: Path) -> FamilyTokenizer:
    _byte_level(out, split=GPT4_SPLIT, trailing=["<|endoftext|>", "<|pad|>"])
    _write_config(out, tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                  pad_token="<|pad|>", unk_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                  chat_template=_OLMO2)
    return FamilyTokenizer("olmo2", out, "gpt2", "dbrx", "<|endoftext|>",
                           "<|endoftext|><|user|>\nHi 12345<|endoftext|>\n")


def _phi4(out: Path) -> FamilyTokenizer:
    _byte_level(out, split=GPT4_SPLIT, trailing=[
        "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|im_start|>", "<|im_end|>",
        "<|im_sep|>", "<|dummy_0|>"])
    _write_config(out, tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>", eos_token="<|im_end|>",
                  pad_token="<|dummy_0|>", unk_token="<|endoftext|>", add_prefix_space=False,
                  clean_up_tokenization_spaces=False, chat_template=_PHI4)
    return FamilyTokenizer("phi4", out, "gpt2", "dbrx", "<|im_end|>",
                           "<|im_start|>user<|im_sep|>Hi 2024<|im_end|><|im_start|>assistant<|im_sep|>")


def _llama2(out: Path) -> FamilyTokenizer:
    specials = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
    _spm_family(out, dummy_prefix=True, specials=specials, ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1})
    _write_config(out, tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                  add_bos_token=True, add_eos_token=False, legacy=True, clean_up_tokenization_spaces=False,
                  chat_template=_LLAMA2)
    return FamilyTokenizer("llama2", out, "llama", "default", "</s>", "<s>[INST] Hi 42 [/INST] Hello</s>")


def _mistral(out: Path) -> FamilyTokenizer:
    # v0.3: the instruction markers are control pieces of the SentencePiece model itself.
    specials = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
    _spm_family(out, dummy_prefix=True, specials=specials, ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1},
                control=["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]"])
    _write_config(out, tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                  add_bos_token=True, add_eos_token=False, legacy=True, clean_up_tokenization_spaces=False,
                  chat_template=_LLAMA2)
    return FamilyTokenizer("mistral", out, "llama", "default", "</s>", "<s>[INST] Hi 42[/INST] Hello</s>")


def _phi3(out: Path) -> FamilyTokenizer:
    # Llama 2's SentencePiece model plus chat tokens after it; those strip the whitespace after them.
    specials = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
    chat = ["<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>",
            "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
    _spm_family(out, dummy_prefix=True, specials=specials, ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1},
                extra=[("<|endoftext|>", False), *((t, True) for t in chat)], bos_first=False,
                rstrip=("</s>",))
    _write_config(out, tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="<|endoftext|>",
                  unk_token="<unk>", pad_token="<|endoftext|>", add_bos_token=False, add_eos_token=False,
                  legacy=False, clean_up_tokenization_spaces=False, chat_template=_PHI3)
    return FamilyTokenizer("phi3", out, "llama", "default", "<|end|>", "<|user|>\nHi 42<|end|>\n<|assistant|>\n")


def _gemma(out: Path) -> FamilyTokenizer:
    # No dummy prefix; <pad> <eos> <bos> <unk> first; the turn markers are user-defined pieces.
    specials = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
    _spm_family(out, dummy_prefix=False, specials=specials, ids={"pad": 0, "eos": 1, "bos": 2, "unk": 3},
                user_defined=["<mask>", "[@BOS@]", "<start_of_turn>", "<end_of_turn>"])
    _write_config(out, tokenizer_class="GemmaTokenizer", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                  pad_token="<pad>", add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
                  spaces_between_special_tokens=False, chat_template=_GEMMA)
    return FamilyTokenizer("gemma", out, "llama", "default", "<end_of_turn>",
                           "<bos><start_of_turn>user\nHi 42<end_of_turn>\n<start_of_turn>model\n")


BUILDERS: dict[str, Callable[[Path], FamilyTokenizer]] = {
    "llama3": _llama3,
    "llama2": _llama2,
    "mistral": _mistral,
    "qwen2": lambda out: _qwen(out, thinking=False),
    "qwen3": lambda out: _qwen(out, thinking=True),
    "smollm2": _smollm2,
    "olmo2": _olmo2,
    "phi3": _phi3,
    "phi4": _phi4,
    "gemma": _gemma,
}
FAMILIES = tuple(BUILDERS)


def build_family_tokenizer(family: str, out: Path) -> FamilyTokenizer:
    """Write a tokenizer shaped like `family`'s published one into `out`."""
    return BUILDERS[family](Path(out))
