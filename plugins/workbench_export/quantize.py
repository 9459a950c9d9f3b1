"""Quantization with llama.cpp's own quantizer, and the report of what it really did.

llama.cpp picks a type per tensor: K-quant mixes (`_M`) give some tensors more bits on purpose,
and a tensor whose rows are not a multiple of the type's block (256 for K-quants) falls back to
another type. The file is read back with `gguf.GGUFReader` so the report states the types that
are actually in it, and lists the tensors that fell back because of their shape.

    from workbench_export.quantize import quantize
    report = quantize(f32_path, out_dir / "model-q4_k_m.gguf", "q4_k_m")
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf

from workbench.errors import UserError

Q = gguf.GGMLQuantizationType
# Our name -> (llama.cpp ftype constant, the tensor type the ftype is built around).
QUANT_TYPES: dict[str, tuple[str, gguf.GGMLQuantizationType]] = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", Q.Q8_0),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", Q.Q6_K),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", Q.Q5_K),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", Q.Q4_K),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", Q.Q4_0),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", Q.Q3_K),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", Q.Q2_K),
}
_K_TYPES = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
# llama.cpp's replacement when a K-quant does not fit a row length (llama-quant.cpp), reversed.
_FALLBACK_OF = {Q.Q5_0: Q.Q4_K, Q.Q5_1: Q.Q5_K, Q.Q8_0: Q.Q6_K}
_SOURCE_TYPES = {Q.F32, Q.F16, Q.BF16}


@contextmanager
def _quiet_llama() -> Iterator[None]:
    """llama.cpp logs a line per tensor through llama-cpp-python's logger; keep errors only."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def tensor_report(path: Path, qtype: str) -> dict[str, Any]:
    """Tensor types in a quantized GGUF, and the tensors that fell back because of their shape."""
    base = QUANT_TYPES[qtype][1]
    block = gguf.GGML_QUANT_SIZES[base][0]
    counts: Counter[str] = Counter()
    fallbacks = []
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        actual = Q(t.tensor_type)
        counts[actual.name] += 1
        row = int(t.shape[0])  # gguf lists the row length (input features) first
        if len(t.shape) < 2 or row % block == 0:
            continue  # the intended type fits; any other choice was llama.cpp's mix, not a fallback
        intended = _FALLBACK_OF.get(actual, base) if base in _K_TYPES else base
        fallbacks.append({"tensor": t.name, "row_length": row, "intended": intended.name, "actual": actual.name})
    return {"tensor_types": dict(sorted(counts.items())), "fallbacks": fallbacks}


def quantize(src: Path, dst: Path, qtype: str, nthread: int = 0) -> dict[str, Any]:
    """Quantize an F32/F16/BF16 GGUF to `qtype` (q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m, q2_k).

    Writes `dst` through a temporary name. Returns path, size, seconds, the tensor types found
    in the output and the list of shape fallbacks.
    """
    if qtype not in QUANT_TYPES:
        raise UserError(f"quantization type '{qtype}' is not one of {', '.join(QUANT_TYPES)}")
    src, dst = Path(src), Path(dst)
    source_types = {Q(t.tensor_type) for t in gguf.GGUFReader(src).tensors if len(t.shape) > 1}
    if not source_types <= _SOURCE_TYPES:
        found = ", ".join(sorted(t.name for t in source_types - _SOURCE_TYPES))
        raise UserError(f"{src} is already quantized ({found}); quantize from an F32, F16 or BF16 GGUF")

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype][0])
    params.nthread = nthread or (os.cpu_count() or 1)
    tmp = dst.with_name(f".{dst.name}.partial")
    t0 = time.perf_counter()
    try:
        with _quiet_llama():
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if status != 0 or not tmp.exists():
            raise RuntimeError(f"llama.cpp could not quantize {src.name} to {qtype} (status {status})")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {"path": str(dst), "qtype": qtype, "size_bytes": dst.stat().st_size, "seconds": round(seconds, 3),
            **tensor_report(dst, qtype)}
