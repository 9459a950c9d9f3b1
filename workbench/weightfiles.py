"""Checks that a weights file is whole before anything loads it.

A truncated or corrupt file otherwise surfaces as whatever the loading library raises
(`SafetensorError: Error while deserializing header`, a numpy reshape error, a zero-padded
tensor), with no file name. These checks read only headers and compare what they promise
against the file's size, without torch, so stages run them in `validate()` and loaders run them
again before reading (a file can change in between). Each failure is one `UserError` naming the
file, its directory, and what is wrong.

- safetensors: 8-byte header length, JSON header, each tensor's dtype and shape against its
  byte span, spans contiguous and inside the file.
- `.pth`: a zip archive (what `torch.save` writes) whose directory can be read; a legacy
  pickle is left to `torch.load(weights_only=True)`.
- GGUF: magic, version, metadata, tensor infos, and every tensor's data inside the file.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import UserError

# Bits per element of every dtype the safetensors library (0.8) reads.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library refuses larger headers too
GGUF_VERSIONS = (2, 3)


def where(path: Path) -> str:
    return f"{path.name} in {path.parent}"


def model_weights(model_dir: Path) -> Path:
    """The weights file of a model directory that loaders read: safetensors first, else the .pth."""
    st = model_dir / "model.safetensors"
    if st.exists():
        return st
    pth = model_dir / "lit_model.pth"
    if pth.exists():
        return pth
    raise UserError(f"{model_dir} has no weights (model.safetensors or lit_model.pth)")


def check_model_dir(model_dir: Path) -> Path:
    """Check the weights file a model directory's loaders read, and return it."""
    path = model_weights(model_dir)
    check_weights(path)
    return path


def check_weights(path: Path, shown: str | None = None) -> None:
    """Check a weights file by its kind: .safetensors, GGUF (by name or magic), or a torch checkpoint.

    `shown` names the file in messages where its path means little (a Hub cache blob)."""
    if not path.is_file():
        raise UserError(f"{shown or where(path)} is missing")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if path.suffix == ".safetensors":
        check_safetensors(path, shown)
    elif path.suffix == ".gguf" or magic == b"GGUF":  # chat takes a GGUF under any name
        check_gguf(path, shown)
    else:
        check_pth(path, shown)


def check_safetensors(path: Path, shown: str | None = None) -> None:
    w = shown or where(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size < 8:
            raise UserError(f"{w} is truncated: it holds {size} bytes, "
                            "fewer than the 8 that give a safetensors header's length")
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_SAFETENSORS_HEADER:
            raise UserError(f"{w} is corrupt: its header length of {n:,} bytes "
                            "is not a safetensors header")
        if 8 + n > size:
            raise UserError(f"{w} is truncated: the header says its JSON takes {n:,} bytes, "
                            f"the file holds {size - 8:,} after the length")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{w} is corrupt: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{w} is corrupt: its header is not a JSON object")
    header.pop("__metadata__", None)
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        spans.append(_safetensors_span(w, name, info))
    spans.sort()
    data = size - 8 - n
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise UserError(f"{w} is corrupt: tensor '{name}' starts at byte {begin:,} of the data "
                            f"where the previous one ends at {end:,} (tensors overlap or leave a gap)")
        end = stop
    if end > data:
        raise UserError(f"{w} is truncated: the header says {end:,} bytes of tensors, "
                        f"the file holds {data:,}")
    if end < data:
        raise UserError(f"{w} is corrupt: it holds {data - end:,} bytes after its last tensor")


def _safetensors_span(w: str, name: str, info: object) -> tuple[int, int, str]:
    """The (begin, end, name) byte span of one header entry, checked against its dtype and shape."""
    bad = f"{w} is corrupt: the header entry of tensor '{name}'"
    if not isinstance(info, dict):
        raise UserError(f"{bad} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise UserError(f"{bad} has no valid shape ({shape!r})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise UserError(f"{bad} has no valid data_offsets ({offsets!r})")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise UserError(f"{bad} has an unknown dtype ({dtype!r})")
    need = -(-math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype] // 8)
    if offsets[1] - offsets[0] != need:
        raise UserError(f"{bad} says {dtype} {shape} ({need:,} bytes) but spans "
                        f"{offsets[1] - offsets[0]:,} bytes")
    return offsets[0], offsets[1], name


def check_pth(path: Path, shown: str | None = None) -> None:
    w = shown or where(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if size == 0:
        raise UserError(f"{w} is empty")
    if magic.startswith(b"\x80"):  # a legacy (pre-zip) torch.save pickle: torch.load checks it
        return
    if magic != b"PK\x03\x04":
        raise UserError(f"{w} is not a PyTorch checkpoint (neither the zip archive "
                        "torch.save writes nor a pickle)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{w} is truncated or corrupt: the zip directory torch.save writes at "
                        f"its end cannot be read ({exc}); the file holds {size:,} bytes") from None
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise UserError(f"{w} is not a PyTorch checkpoint: its zip archive holds no data.pkl")
    end = max(i.header_offset + i.compress_size for i in infos)
    if end > size:
        raise UserError(f"{w} is truncated: its zip directory says {end:,} bytes of entries, "
                        f"the file holds {size:,}")


def check_gguf(path: Path, shown: str | None = None) -> None:
    """Walk a GGUF's header and tensor infos, and check the data fits the file.

    `gguf.GGUFReader` fails on a short file with numpy's reshape errors, and builds an array per
    metadata item (tens of seconds for a 128k-token vocabulary); this walk reads the same layout
    from a memory map and says what is wrong and where.
    """
    w = shown or where(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"{w} is not a GGUF file (it does not start with 'GGUF')")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                tensors_end = _GGUFWalk(data).tensors_end()
            except _Short:
                raise UserError(f"{w} is truncated: it ends inside its header, at {size:,} bytes") from None
            except _Corrupt as exc:
                raise UserError(f"{w} is corrupt: {exc}") from None
    if tensors_end > size:
        raise UserError(f"{w} is truncated: its header says the tensors end at byte {tensors_end:,}, "
                        f"the file holds {size:,}")


class _Short(Exception):
    pass


class _Corrupt(Exception):
    pass


class _GGUFWalk:
    """A cursor over a GGUF's header (the layout `gguf.GGUFWriter` writes)."""

    # Value type ids of the GGUF format and their struct codes; 8 is a string, 9 an array.
    SCALARS: ClassVar[dict[int, str]] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                                         10: "Q", 11: "q", 12: "d"}
    STRING, ARRAY = 8, 9

    def __init__(self, data: mmap.mmap):
        self.data, self.pos, self.size = data, 4, len(data)

    def unpack(self, code: str) -> Any:
        n = struct.calcsize(code)
        if self.pos + n > self.size:
            raise _Short
        (value,) = struct.unpack_from("<" + code, self.data, self.pos)
        self.pos += n
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Short
        self.pos += n

    def string(self) -> str:
        n = self.unpack("Q")
        start = self.pos
        self.skip(n)
        return self.data[start:self.pos].decode("utf-8", "replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in self.SCALARS:
            return self.unpack(self.SCALARS[vtype])
        if vtype == self.STRING:
            return self.string()
        if vtype != self.ARRAY:
            raise _Corrupt(f"metadata '{key}' has an unknown value type {vtype}")
        item, count = self.unpack("I"), self.unpack("Q")
        if item in self.SCALARS:
            self.skip(struct.calcsize(self.SCALARS[item]) * count)
        elif item == self.STRING:  # a vocabulary: one length-prefixed string after another
            pos, last, data, length = self.pos, self.size - 8, self.data, struct.Struct("<Q").unpack_from
            for _ in range(count):
                if pos > last:
                    raise _Short
                pos += 8 + length(data, pos)[0]
            self.pos = pos
            self.skip(0)
        else:
            for _ in range(count):
                self.value(item, key)
        return None

    def tensors_end(self) -> int:
        """The byte offset where the last tensor's data ends."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        version = self.unpack("I")
        if version not in GGUF_VERSIONS:
            raise _Corrupt(f"version {version} is not a GGUF version llama.cpp reads "
                           f"({', '.join(map(str, GGUF_VERSIONS))})")
        n_tensors, n_kv = self.unpack("Q"), self.unpack("Q")
        if n_tensors > self.size or n_kv > self.size:
            raise _Corrupt(f"its header claims {n_tensors:,} tensors and {n_kv:,} metadata keys")
        alignment = 32
        for _ in range(n_kv):
            key = self.string()
            value = self.value(self.unpack("I"), key)
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
        end = 0
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.unpack("I")
            if n_dims > 8:
                raise _Corrupt(f"tensor '{name}' claims {n_dims} dimensions")
            count = math.prod(self.unpack("Q") for _ in range(n_dims))
            raw_type, offset = self.unpack("I"), self.unpack("Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
            except (ValueError, KeyError):
                raise _Corrupt(f"tensor '{name}' has an unknown type {raw_type}") from None
            if count % block:
                raise _Corrupt(f"tensor '{name}' has {count:,} values, not a whole number of {block}-value blocks")
            end = max(end, offset + count // block * type_size)
        return -(-self.pos // alignment) * alignment + end
