"""Native GGUF writer for LitGPT checkpoints, built on the `gguf` package.

Tensors stream: the header and tensor table are written first from shapes alone, then each
tensor is read, converted and written before the next one is touched, so peak memory stays
within a few copies of the largest tensor above the process baseline when weights come from
`model.safetensors`, and one copy of the model when a merged state dict is handed in. The file is written under a temporary name
and renamed when complete.

    from workbench_export.gguf_writer import write_gguf
    info = write_gguf(model_dir, out_dir / "model-f16.gguf", "f16")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gguf
import numpy as np
import torch

from workbench.errors import UserError
from workbench.families.common import is_longrope, is_yarn
from workbench.ml.checkpoint import read_meta
from workbench.prompts import style_for_model
from workbench_export.families import TENSOR_NAMES, Family, Shape, family_for, read_config, shape_of
from workbench_export.templates import gguf_chat_template
from workbench_export.tokenizer_meta import TokenizerMeta, read_tokenizer

OUT_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}
Progress = Callable[[int, int], None]


class _SafetensorsReader:
    """Reads one tensor at a time from a .safetensors file with plain file reads.

    The `safetensors` package memory-maps the whole file, and every page it touches stays in the
    process's resident set until the end: the writer would hold a whole copy of the model. Plain
    reads keep only the tensor being converted. The format is a length-prefixed JSON header
    (dtype, shape, byte offsets) followed by the raw little-endian data.
    """

    DTYPES: ClassVar[dict[str, torch.dtype]] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

    def __init__(self, path: Path):
        from workbench.weightfiles import check_safetensors

        check_safetensors(path)  # lengths and offsets against the file size, before any tensor
        self.path = path
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        self.header: dict[str, Any] = header
        self.data_start = 8 + n
        bad = sorted({v["dtype"] for v in header.values()} - set(self.DTYPES))
        if bad:
            raise UserError(f"{path} holds {', '.join(bad)} tensors; GGUF export reads F32, F16 and BF16 weights")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> torch.Tensor:
        info = self.header[name]
        begin, end = info["data_offsets"]
        buf = bytearray(end - begin)
        with open(self.path, "rb") as fh:
            fh.seek(self.data_start + begin)
            got = fh.readinto(buf)
        if got != len(buf):  # the file shrank since it was checked: never pad with zeros
            raise UserError(f"{self.path.name} in {self.path.parent} is truncated: tensor '{name}' needs "
                            f"{len(buf):,} bytes, the file holds {got:,} of them")
        return torch.frombuffer(buf, dtype=self.DTYPES[info["dtype"]]).reshape(info["shape"])


class _Weights:
    """Tensors by LitGPT name, loaded one at a time."""

    def __init__(self, model_dir: Path, state_dict: Mapping[str, torch.Tensor] | None):
        self._dict = state_dict
        self._kept: tuple[str, torch.Tensor] | None = None
        self._file: _SafetensorsReader | None = None
        if state_dict is None:
            st = model_dir / "model.safetensors"
            if st.exists():
                self._file = _SafetensorsReader(st)
            else:
                from workbench.ml.checkpoint import load_state_dict

                self._dict = load_state_dict(model_dir)  # memory-mapped .pth: pages in on use

    def names(self) -> set[str]:
        return set(self._dict) if self._dict is not None else set(self._file.header)  # type: ignore[union-attr]

    def shape(self, name: str) -> tuple[int, ...]:
        if self._dict is not None:
            return tuple(self._dict[name].shape)
        return self._file.shape(name)  # type: ignore[union-attr]

    def get(self, name: str, keep: bool = False) -> torch.Tensor:
        """The tensor in F32; `keep` holds it for the next call (Q, K and V share one tensor)."""
        if self._kept is not None and self._kept[0] == name:
            return self._kept[1]
        tensor = self._raw(name).detach().to(torch.float32)
        self._kept = (name, tensor) if keep else None
        return tensor

    def digest(self, name: str) -> bytes:
        """A hash of the stored bytes, so two tensors compare without both being in memory."""
        raw = self._raw(name).detach().contiguous()
        return hashlib.blake2b(raw.view(torch.uint8).numpy(), digest_size=32).digest() + str(raw.dtype).encode()

    def _raw(self, name: str) -> torch.Tensor:
        return self._dict[name] if self._dict is not None else self._file.get(name)  # type: ignore[union-attr]


@dataclass
class _Planned:
    name: str
    shape: tuple[int, ...]  # torch order: (rows, cols)
    qtype: gguf.GGMLQuantizationType
    make: Callable[[], torch.Tensor]


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of one projection from LitGPT's rotate-halves layout to llama.cpp's adjacent pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _qkv_part(weights: _Weights, i: int, part: str, suffix: str, family: Family, shape: Shape) -> torch.Tensor:
    """One of Q, K, V from LitGPT's fused [Q; K; V] rows (the layout since LitGPT 0.5.5)."""
    fused = weights.get(f"transformer.h.{i}.attn.qkv.{suffix}", keep=True)
    q_rows = shape.n_head * shape.head_size
    kv_rows = shape.n_query_groups * shape.head_size
    start, rows, heads = {"q": (0, q_rows, shape.n_head), "k": (q_rows, kv_rows, shape.n_query_groups),
                          "v": (q_rows + kv_rows, kv_rows, shape.n_query_groups)}[part]
    out = fused[start:start + rows].clone()
    if not family.rope_neox and part in ("q", "k"):
        out = _permute(out, heads)
    return out


def _llama3_rope_factors(shape: Shape) -> torch.Tensor:
    """Per-frequency divisors that turn plain RoPE into LitGPT's Llama 3 scaled RoPE."""
    adj = shape.rope_adjustments or {}
    dim = shape.head_size
    theta = 1.0 / (shape.rope_base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / theta
    smooth = (adj["original_max_seq_len"] / wavelen - adj["low_freq_factor"]) / (
        adj["high_freq_factor"] - adj["low_freq_factor"])
    smooth = np.clip(smooth, 0.0, 1.0)
    adjusted = (1 - smooth) * (theta / adj["factor"]) + smooth * theta
    return torch.from_numpy((theta / adjusted).astype(np.float32))


# LitGPT's RMSNorm weights: block norms, post norms, Q/K norms and the final norm.
_NORM_SUFFIXES = ("norm_1.weight", "norm_2.weight", "_norm.weight", "norm_q.weight", "norm_k.weight", "ln_f.weight")


def _plan(weights: _Weights, family: Family, shape: Shape, qtype: gguf.GGMLQuantizationType,
          unit_offset: bool = False) -> tuple[list[_Planned], bool]:
    """Every GGUF tensor with its shape, type and a function that produces it when its turn comes.

    `unit_offset`: LitGPT multiplies by (1 + weight) in every RMSNorm; llama.cpp by the weight.
    """
    names = weights.names()
    plan: list[_Planned] = []

    def add(gguf_name: str, rows_cols: tuple[int, ...], make: Callable[[], torch.Tensor]) -> None:
        # Norms, biases and rope factors stay F32, as llama.cpp expects for 1-D tensors.
        kind = qtype if len(rows_cols) > 1 else gguf.GGMLQuantizationType.F32
        plan.append(_Planned(gguf_name, rows_cols, kind, make))

    def direct(lit: str, gguf_name: str) -> None:
        if lit not in names:
            raise UserError(f"the checkpoint has no {lit}; it does not match its model_config.yaml")
        if unit_offset and lit.endswith(_NORM_SUFFIXES):
            add(gguf_name, weights.shape(lit), lambda: weights.get(lit) + 1.0)
        else:
            add(gguf_name, weights.shape(lit), lambda: weights.get(lit))

    direct("transformer.wte.weight", TENSOR_NAMES["transformer.wte.weight"])
    if shape.rope_adjustments and "low_freq_factor" in shape.rope_adjustments:
        add("rope_freqs.weight", (shape.head_size // 2,), lambda: _llama3_rope_factors(shape))
    if is_longrope(shape.rope_adjustments):
        # LongRoPE's divisors; llama.cpp picks the long ones when its context exceeds the original.
        for which in ("long", "short"):
            values = shape.rope_adjustments[f"{which}_factor"]  # type: ignore[index]
            add(f"rope_factors_{which}.weight", (len(values),),
                lambda values=values: torch.tensor(values, dtype=torch.float32))
    rows = {"q": shape.n_head * shape.head_size, "k": shape.n_query_groups * shape.head_size,
            "v": shape.n_query_groups * shape.head_size}
    for i in range(shape.n_layer):
        for suffix in ("weight", "bias") if family.qkv_bias else ("weight",):
            if f"transformer.h.{i}.attn.qkv.{suffix}" not in names:
                raise UserError(f"the checkpoint has no transformer.h.{i}.attn.qkv.{suffix}")
            for part in ("q", "k", "v"):
                dims = (rows[part], shape.n_embd) if suffix == "weight" else (rows[part],)
                add(f"blk.{i}.attn_{part}.{suffix}", dims,
                    lambda i=i, part=part, suffix=suffix: _qkv_part(weights, i, part, suffix, family, shape))
        for lit, gguf_name in family.layer_tensors.items():
            direct(lit.format(i=i), gguf_name.format(i=i))
        for gguf_name, parts in family.fused_tensors.items():
            lits = [p.format(i=i) for p in parts]
            missing = [lit for lit in lits if lit not in names]
            if missing:
                raise UserError(f"the checkpoint has no {missing[0]}; it does not match its model_config.yaml")
            fused_rows = sum(weights.shape(lit)[0] for lit in lits)
            add(gguf_name.format(i=i), (fused_rows, *weights.shape(lits[0])[1:]),
                lambda lits=lits: torch.cat([weights.get(lit) for lit in lits]))
    direct("transformer.ln_f.weight", TENSOR_NAMES["transformer.ln_f.weight"])
    # llama.cpp reuses token_embd as the output layer when output.weight is absent.
    tied = "lm_head.weight" not in names or (
        weights.shape("lm_head.weight") == weights.shape("transformer.wte.weight")
        and weights.digest("lm_head.weight") == weights.digest("transformer.wte.weight"))
    if not tied:
        direct("lm_head.weight", TENSOR_NAMES["lm_head.weight"])
    return plan, tied


def _to_numpy(t: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F16:
        return t.to(torch.float16).contiguous().numpy()
    if qtype == gguf.GGMLQuantizationType.BF16:
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    return t.to(torch.float32).contiguous().numpy()


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    return math.prod(shape) * (4 if qtype == gguf.GGMLQuantizationType.F32 else 2)


def _add_metadata(writer: gguf.GGUFWriter, shape: Shape, tok: TokenizerMeta, ftype: int,
                  name: str, chat_template: str | None, extra: Mapping[str, str]) -> None:
    writer.add_name(name)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_query_groups)
    writer.add_key_length(shape.head_size)
    writer.add_value_length(shape.head_size)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    writer.add_rope_dimension_count(shape.rope_dims)
    writer.add_rope_freq_base(shape.rope_base)
    adj = shape.rope_adjustments
    if is_yarn(adj):
        # llama.cpp scales cos and sin by 1 + 0.1 ln(factor) itself, times the attention factor written.
        factor = float(adj["yarn_factor"])  # type: ignore[index]
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(int(adj["yarn_original_max_seq_len"]))  # type: ignore[index]
        own = 1.0 + 0.1 * math.log(factor) if factor > 1 else 1.0
        if not math.isclose(adj["attention_factor"] / own, 1.0, rel_tol=1e-7):  # type: ignore[index]
            writer.add_rope_scaling_attn_factors(adj["attention_factor"] / own)  # type: ignore[index]
    if shape.rope_condense_ratio != 1:
        # LitGPT divides positions by the ratio: llama.cpp's linear scaling does the same.
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(shape.rope_condense_ratio))
    writer.add_vocab_size(shape.padded_vocab_size)
    tok.add_to(writer)
    if chat_template:
        writer.add_chat_template(chat_template)
    for key, value in extra.items():
        writer.add_string(f"workbench.{key}", value)


@contextmanager
def _temporary(out_path: Path) -> Iterator[Path]:
    """A sibling temp path that becomes `out_path` only when the block finishes."""
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(model_dir: Path, out_path: Path, out_type: str = "f16", progress: Progress | None = None, *,
               state_dict: Mapping[str, torch.Tensor] | None = None, name: str | None = None) -> dict[str, Any]:
    """Write the LitGPT model in `model_dir` as one GGUF file of type f32, f16 or bf16.

    `state_dict` replaces the directory's weights (a LoRA adapter merged in memory); config,
    tokenizer and prompt style still come from `model_dir`. `progress(done, total)` is called
    after each tensor. Returns what was written: path, size, architecture, tensor count, tying.
    """
    if out_type not in OUT_TYPES:
        raise UserError(f"GGUF output type '{out_type}' is not one of {', '.join(OUT_TYPES)}")
    t0 = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    family = family_for(config, model_dir / "model_config.yaml")
    if family.gguf_arch is None:
        raise UserError(f"{model_dir}: the {family.name} family has no GGUF export")
    shape = shape_of(config, family)
    tok = read_tokenizer(model_dir, shape.padded_vocab_size)
    style = style_for_model(model_dir)
    meta = read_meta(model_dir)
    ftype, qtype = OUT_TYPES[out_type]
    weights = _Weights(model_dir, state_dict)
    # LitGPT's own rule (Config.norm_class): the unit offset follows the name.
    plan, tied = _plan(weights, family, shape, qtype, unit_offset="Gemma" in str(config.get("name", "")))
    if not tied and not family.untied_output:
        raise UserError(f"{model_dir}: the output layer is not the embedding, and llama.cpp's {family.gguf_arch} "
                        "architecture always uses the embedding as its output layer (a LoRA adapter on 'head' "
                        "unties them: finetune without that target to export)")
    embd_rows = next(p.shape[0] for p in plan if p.name == "token_embd.weight")
    if embd_rows != shape.padded_vocab_size:
        raise UserError(f"{model_dir}: the embedding has {embd_rows} rows but model_config.yaml says "
                        f"padded_vocab_size {shape.padded_vocab_size}")

    extra = {"family": family.name, "prompt_style": style.name if style else ""}
    if style and style.stop:
        extra["stop"] = "\n".join(style.stop)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, family.gguf_arch)
        try:
            _add_metadata(writer, shape, tok, int(ftype), tok.general_name(name or meta.get("name") or model_dir.name),
                          gguf_chat_template(style), extra)
            if family.gguf_metadata is not None:
                family.gguf_metadata(writer, config)
            for item in plan:
                # gguf lists dimensions fastest-first; the writer reverses torch's (rows, cols).
                writer.add_tensor_info(item.name, item.shape, np.dtype(np.float32), _nbytes(item.shape, item.qtype),
                                       raw_dtype=item.qtype)
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for done, item in enumerate(plan, 1):
                tensor = item.make()
                if tuple(tensor.shape) != item.shape:
                    raise UserError(f"{item.name}: expected shape {item.shape}, found {tuple(tensor.shape)}")
                writer.write_tensor_data(_to_numpy(tensor, item.qtype))
                del tensor
                if progress is not None:
                    progress(done, len(plan))
        finally:
            writer.close()
    n_params = sum(math.prod(p.shape) for p in plan if not p.name.startswith(("rope_freqs.", "rope_factors_")))
    return {
        "path": str(out_path), "out_type": out_type, "arch": family.gguf_arch, "family": family.name,
        "n_tensors": len(plan), "n_params": n_params, "tied_embeddings": tied,
        "size_bytes": out_path.stat().st_size, "tokenizer": {"model": tok.model, "pre": tok.pre},
        "eos_token": tok.token_text(tok.special_ids.get("eos")),
        "chat_template": bool(style), "seconds": round(time.perf_counter() - t0, 3),
    }
