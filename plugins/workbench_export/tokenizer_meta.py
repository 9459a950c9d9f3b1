"""Tokenizer metadata for GGUF: byte-level BPE (`tokenizer.json`) and SentencePiece (`tokenizer.model`).

llama.cpp re-implements the tokenizer from what the GGUF says, so everything it needs is
written here: the token list padded to the model's vocabulary rows, token types (control tokens
are what chat templates are made of), merges, the pre-tokenizer name and the special ids.
A byte-level BPE `tokenizer.json` is used when present, as LitGPT's `Tokenizer` does; a
SentencePiece model converted to `tokenizer.json` is described from its `tokenizer.model`.

Whatever llama.cpp cannot reproduce exactly (another pre-tokenizer or normalizer, added tokens
that strip whitespace in ways it does not know) is refused, never written approximately. The
end-of-turn token is found by rendering the chat template, so chat stops where a turn ends.

`check_tokenizer` is light (json only) and runs in the stage's `validate()`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import UserError

# Pre-tokenizer split patterns exactly as Hugging Face tokenizer.json files carry them, and the
# name llama.cpp knows each by (`tokenizer.ggml.pre`). An unknown name makes llama.cpp refuse
# the file, and a wrong one tokenizes differently, so anything else is refused.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's pattern is also cl100k's (OLMo 2, Phi-4); llama.cpp's "llama-bpe" looks whole words up
# in the vocabulary before merging (tokenizer.json's `ignore_merges`), its "dbrx" does not.
SPLIT_PATTERNS = {_GPT2: "gpt-2", _LLAMA3: "llama-bpe", _QWEN2: "qwen2"}
KNOWN_PRE = (
    "ByteLevel(add_prefix_space=False) as GPT-2 and workbench tokenizers use, "
    "the Llama 3 / cl100k and Qwen2 split patterns, and SmolLM's Digits+ByteLevel"
)
# llama.cpp applies no normalizer to byte-level BPE. NFC (Qwen2) is accepted: text already in NFC,
# as nearly all text is, tokenizes identically; decomposed accents do not.
BPE_NORMALIZERS = (None, "NFC")
# Added-token whitespace stripping llama.cpp reproduces: Phi-3's, keyed on the model name.
PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")

# gguf.TokenType values, repeated here so this module stays importable without numpy.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class TokenizerMeta:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, pad, unk
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    name_tag: str | None = None  # what general.name must contain for llama.cpp's per-model token flags

    def general_name(self, name: str) -> str:
        """The GGUF's general.name: `name`, tagged where llama.cpp keys token behaviour on it, and
        untagged where the tokenizer lacks that behaviour (a Phi-3 with a retrained tokenizer)."""
        if self.name_tag is None:
            return re.sub(r"(?i)phi-?3", lambda m: m.group(0)[:3] + " 3", name)
        if self.name_tag not in name.lower():
            return f"{name} ({self.name_tag} tokenizer)"
        return name

    def add_to(self, writer: Any) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)

    def token_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        tok = self.tokens[token_id]
        return tok.decode("utf-8", errors="replace") if isinstance(tok, bytes) else tok


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc}); fix or replace the tokenizer file") from None
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, or a UserError."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise UserError(
                f"{where}: the ByteLevel pre-tokenizer adds a prefix space, which llama.cpp never does; "
                "retrain the tokenizer with ByteLevel(add_prefix_space=False)"
            )
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PATTERNS and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            name = SPLIT_PATTERNS[pattern]
            ignore_merges = bool((tokenizer_json.get("model") or {}).get("ignore_merges"))
            if name == "llama-bpe" and not ignore_merges:
                return "dbrx"
            if name != "llama-bpe" and ignore_merges:
                raise UserError(f"{where}: ignore_merges is set with the {name} pre-tokenizer, "
                                "a combination llama.cpp does not implement")
            return name
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")):
        return "smollm"
    raise UserError(
        f"{where}: pre-tokenizer {json.dumps(pre)[:160]} has no llama.cpp equivalent known to workbench; "
        f"supported: {KNOWN_PRE}"
    )


def _is_byte_level_bpe(data: dict[str, Any]) -> bool:
    return (data.get("model") or {}).get("type") == "BPE" and (data.get("decoder") or {}).get("type") == "ByteLevel"


def _normalizer_steps(normalizer: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not normalizer:
        return []
    return normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]


def _normalizer_kinds(normalizer: dict[str, Any] | None) -> list[str]:
    return [str(step.get("type")) for step in _normalizer_steps(normalizer)]


_SPACE_TO_META = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


def _check_bpe_normalizer(data: dict[str, Any], where: Path) -> None:
    kinds = _normalizer_kinds(data.get("normalizer"))
    if kinds and (len(kinds) > 1 or kinds[0] not in BPE_NORMALIZERS):
        raise UserError(f"{where}: normalizer {'+'.join(kinds)} has no llama.cpp equivalent "
                        "(byte-level BPE supports none, or NFC)")


def spm_space_prefix(data: dict[str, Any], where: Path) -> bool:
    """Whether a SentencePiece tokenizer.json puts a space before text, as llama.cpp can; a UserError otherwise.

    llama.cpp, like SentencePiece itself, adds the prefix at the start of the text and after every
    special token even where a space is already there, as the legacy Prepend normalizer does.
    Metaspace prepends only where no space is (" Hi" stays "▁Hi", llama.cpp makes "▁▁Hi"), so it
    matches only when it never prepends."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise UserError(f"{where}: a SentencePiece {model.get('type')} model without byte fallback; llama.cpp "
                        "reproduces SentencePiece BPE with byte_fallback only")
    steps = _normalizer_steps(data.get("normalizer"))
    kinds = _normalizer_kinds(data.get("normalizer"))
    pre = data.get("pre_tokenizer") or {}
    if steps == [{"type": "Prepend", "prepend": "\u2581"}, _SPACE_TO_META] and not pre:
        return True
    # Gemma: spaces become "▁", nothing is prepended; a split at spaces is then a no-op.
    if steps == [_SPACE_TO_META] and (not pre or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "})):
        return False
    if not kinds and pre.get("type") == "Metaspace":
        scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
        if scheme == "never" and not pre.get("split", False):
            return False
        raise UserError(f"{where}: Metaspace pre-tokenizer with prepend_scheme '{scheme}' "
                        f"(split={pre.get('split', False)}) skips the space prefix where text already starts "
                        "with a space; llama.cpp adds it as SentencePiece does (the legacy Prepend normalizer)")
    raise UserError(f"{where}: SentencePiece normalizer {'+'.join(kinds) or 'none'} with pre-tokenizer "
                    f"{pre.get('type')} has no llama.cpp equivalent")


def strip_name_tag(data: dict[str, Any], where: Path) -> str | None:
    """The model-name tag llama.cpp needs to strip whitespace around added tokens as tokenizer.json does.

    GGUF has no per-token flags for this; llama.cpp sets them for Phi-3 by name (all special
    tokens but <unk>, <s> and <|endoftext|> swallow the whitespace after them)."""
    added = data.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("single_word") for a in added):
        bad = next(a["content"] for a in added if a.get("lstrip") or a.get("single_word"))
        raise UserError(f"{where}: added token {bad!r} strips whitespace to its left (lstrip/single_word), "
                        "which llama.cpp does not reproduce")
    rstrip = {a["content"] for a in added if a.get("rstrip")}
    if not rstrip:
        return None
    expected = {a["content"] for a in added} - set(PHI3_NO_RSTRIP)
    if rstrip != expected:
        odd = sorted(rstrip - expected) or sorted(rstrip)
        unlike = f" but {sorted(expected - rstrip)[0]!r} does not" if rstrip < expected else ""
        raise UserError(f"{where}: added token {odd[0]!r} strips whitespace to its right (rstrip){unlike}; llama.cpp "
                        f"reproduces only Phi-3's pattern: every added token but {', '.join(PHI3_NO_RSTRIP)}")
    return "phi-3"


def check_tokenizer(model_dir: Path) -> str:
    """Cheap check that the tokenizer can be described in GGUF; returns "bpe" or "spm"."""
    tj, spm = model_dir / "tokenizer.json", model_dir / "tokenizer.model"
    if tj.exists():
        data = _json(tj)
        strip_name_tag(data, tj)
        if _is_byte_level_bpe(data):
            _check_bpe_normalizer(data, tj)
            pre_tokenizer_name(data, tj)
            return "bpe"
        if spm.exists():
            # A SentencePiece tokenizer converted to tokenizer.json (Llama 2, Mistral, Gemma): the
            # original model file describes it exactly; _read_spm checks both agree.
            spm_space_prefix(data, tj)
            return "spm"
        raise UserError(
            f"{tj} is a {(data.get('model') or {}).get('type')} tokenizer without byte-level decoding and "
            "there is no tokenizer.model beside it; GGUF export supports byte-level BPE tokenizer.json "
            "files and SentencePiece tokenizer.model files"
        )
    if spm.exists():
        return "spm"
    raise UserError(f"{model_dir} holds no tokenizer (tokenizer.json or tokenizer.model)")


def read_tokenizer(model_dir: Path, n_vocab: int) -> TokenizerMeta:
    """The tokenizer of a model directory, padded to `n_vocab` tokens (the embedding rows)."""
    kind = check_tokenizer(model_dir)
    meta = _read_bpe(model_dir, n_vocab) if kind == "bpe" else _read_spm(model_dir, n_vocab)
    _special_ids(model_dir, meta)
    eot = _end_of_turn(model_dir, meta)
    if eot is not None:
        meta.special_ids["eot"] = eot
    return meta


def _pad(tokens: list[str | bytes], types: list[int], n_vocab: int, where: Path) -> None:
    if len(tokens) > n_vocab:
        raise UserError(
            f"{where} has {len(tokens)} tokens but the model has only {n_vocab} embedding rows; "
            "the tokenizer does not belong to this model"
        )
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)


def _shift_spaces(piece: str) -> str:
    """Newer tokenizer.json files store merges as pairs, so pieces may hold spaces; llama.cpp's
    "a b" merge strings carry them shifted by 256, as convert_hf_to_gguf writes them."""
    return "".join(chr(ord(c) + 256) if c == " " else c for c in piece)


def _read_bpe(model_dir: Path, n_vocab: int) -> TokenizerMeta:
    path = model_dir / "tokenizer.json"
    data = _json(path)
    model = data["model"]
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    tokens: list[str | bytes] = []
    types: list[int] = []
    for i in range(max(by_id, default=-1) + 1):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(kinds.get(i, NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    _pad(tokens, types, n_vocab, path)
    merges = [m if isinstance(m, str) else " ".join(_shift_spaces(part) for part in m)
              for m in model.get("merges") or []]
    return TokenizerMeta(model="gpt2", pre=pre_tokenizer_name(data, path), tokens=tokens, types=types,
                         merges=merges, name_tag=strip_name_tag(data, path))


def _read_spm(model_dir: Path, n_vocab: int) -> TokenizerMeta:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise UserError(
            f"{model_dir}/tokenizer.model is a SentencePiece model; install the `sentencepiece` package to export it"
        ) from None
    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor(model_file=str(path))
    tokens: list[str | bytes] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        kind = NORMAL
        if sp.is_unknown(i):
            kind = UNKNOWN
        elif sp.is_control(i):
            kind = CONTROL
        elif sp.is_unused(i):
            kind = UNUSED
        elif sp.is_byte(i):
            kind = BYTE
        types.append(kind)
    if BYTE not in types:
        # llama.cpp spells out unknown characters as <0xNN> byte tokens and aborts when they are missing.
        raise UserError(
            f"{path} has no byte-fallback pieces (<0x00>…<0xFF>); llama.cpp needs them to encode "
            "characters outside the vocabulary. Retrain it with byte_fallback=True"
        )
    # Added tokens: special ones are control tokens (matched in text only when asked, as
    # transformers' split_special_tokens does), the others user-defined (always matched). Gemma's
    # turn markers are user-defined pieces of the model itself, marked special here.
    tj_path = model_dir / "tokenizer.json"
    tj = _json(tj_path) if tj_path.exists() else {}
    added: dict[int, tuple[str, int]] = {}
    added_json = model_dir / "added_tokens.json"
    for text, token_id in (_json(added_json) if added_json.exists() else {}).items():
        added[int(token_id)] = (text, USER_DEFINED)
    for entry in tj.get("added_tokens") or []:
        added[int(entry["id"])] = (entry["content"], CONTROL if entry.get("special") else USER_DEFINED)
    for token_id in sorted(added):
        text, kind = added[token_id]
        while len(tokens) <= token_id:
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(UNUSED)
        if types[token_id] in (UNKNOWN, BYTE):
            continue  # <unk> keeps its type; byte pieces are never matched in text
        if types[token_id] == CONTROL:
            kind = CONTROL
        tokens[token_id], types[token_id] = text.encode("utf-8"), kind
        if token_id >= sp.vocab_size():
            scores[token_id] = -1000.0
    _pad(tokens, types, n_vocab, path)
    scores.extend([-1000.0] * (len(tokens) - len(scores)))
    # SentencePiece's "dummy prefix" shows as a leading "▁" on the first piece of a word.
    first = sp.encode("a")
    add_space_prefix = bool(first) and sp.id_to_piece(first[0]).startswith("\u2581")
    if tj and spm_space_prefix(tj, tj_path) != add_space_prefix:
        raise UserError(f"{tj_path} and {path} disagree on the space before text "
                        f"(tokenizer.model {'adds' if add_space_prefix else 'does not add'} it); "
                        "the tokenizer files do not belong together")
    meta = TokenizerMeta(model="llama", pre="default", tokens=tokens, types=types, scores=scores,
                         add_space_prefix=add_space_prefix, add_bos=True,
                         name_tag=strip_name_tag(tj, tj_path) if tj else None)
    for role, token_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
        if token_id >= 0:
            meta.special_ids[role] = token_id
    return meta


def _special_ids(model_dir: Path, meta: TokenizerMeta) -> None:
    """BOS/EOS/PAD the way LitGPT resolves them: tokenizer_config.json, then generation_config.json."""
    lookup: dict[str, int] = {}
    for i, tok in enumerate(meta.tokens):
        text = tok.decode("utf-8", errors="replace") if isinstance(tok, bytes) else tok
        lookup.setdefault(text, i)
    tc_path = model_dir / "tokenizer_config.json"
    tc = _json(tc_path) if tc_path.exists() else {}
    for kind in ("bos", "eos", "pad", "unk"):
        content = _token_content(tc.get(f"{kind}_token"))
        if content is not None and content in lookup:
            meta.special_ids[kind] = lookup[content]
    gc_path = model_dir / "generation_config.json"
    gc = _json(gc_path) if gc_path.exists() else {}
    for kind in ("bos", "eos", "pad"):
        value = gc.get(f"{kind}_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and kind not in meta.special_ids:
            meta.special_ids[kind] = value
    if isinstance(tc.get("add_bos_token"), bool):
        meta.add_bos = tc["add_bos_token"]
    elif meta.model == "gpt2":
        meta.add_bos = _template_adds_bos(model_dir)
    if isinstance(tc.get("add_eos_token"), bool):
        meta.add_eos = tc["add_eos_token"]
    for kind, token_id in meta.special_ids.items():
        if not 0 <= token_id < len(meta.tokens):
            raise UserError(f"{model_dir}: the {kind} token id {token_id} is outside the vocabulary")


def _template_adds_bos(model_dir: Path) -> bool:
    """Whether tokenizer.json's post-processor puts a special token first (Llama 3 does)."""
    post = _json(model_dir / "tokenizer.json").get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


def _end_of_turn(model_dir: Path, meta: TokenizerMeta) -> int | None:
    """The token that closes an assistant turn in the model's chat template (`<|eot_id|>`,
    `<|im_end|>`, `<end_of_turn>`, `<|end|>`, ...), found by rendering one exchange.

    llama.cpp stops generating at it; left out, it guesses from token texts and may pick
    another one (Qwen's `<|endoftext|>` for `<|im_end|>`)."""
    import jinja2

    from workbench.prompts import style_for_model

    style = style_for_model(model_dir)
    if style is None:
        return None
    mark = "\x00REPLY\x00"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
    try:
        env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
        text = env.from_string(style.chat_template).render(
            messages=messages, add_generation_prompt=False, bos_token=meta.token_text(meta.special_ids.get("bos")),
            eos_token=meta.token_text(meta.special_ids.get("eos")))
    except Exception:  # a template that needs more than messages: llama.cpp's own guess stands
        return None
    after = text.partition(mark)[2]
    found: tuple[int, int, int] | None = None  # (position, -length, id): earliest, then longest
    for token_id, kind in enumerate(meta.types):
        if kind not in (CONTROL, USER_DEFINED):
            continue
        piece = meta.token_text(token_id)
        pos = after.find(piece) if piece else -1
        if pos >= 0 and (found is None or (pos, -len(piece)) < found[:2]):
            found = (pos, -len(piece), token_id)
    return found[2] if found else None
