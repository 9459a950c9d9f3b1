"""What kind of model a path holds, and whether its weight files are whole.

Light module (no torch, no LitGPT): it runs in the caller's process from `validate()`, so a path
that is not a model, or a cut-off weights file, is refused before a run is even created.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from workbench.errors import UserError

GGUF_MAGIC = b"GGUF"
#: The marker file of each directory format, in the order they are tried.
HF = "hf"
LITGPT = "litgpt"
GGUF = "gguf"
PEFT = "peft-lora"
LITGPT_LORA = "litgpt-lora"
ADAPTERS = (PEFT, LITGPT_LORA)


@dataclass(frozen=True)
class Source:
    """A model on the user's disk: its format and the path that holds it."""

    format: str
    path: Path

    @property
    def is_adapter(self) -> bool:
        return self.format in ADAPTERS

    @property
    def label(self) -> str:
        return {HF: "Hugging Face model directory", LITGPT: "LitGPT checkpoint", GGUF: "GGUF file",
                PEFT: "PEFT LoRA adapter", LITGPT_LORA: "LitGPT LoRA checkpoint"}[self.format]


def detect(path: Path, *, base_given: bool) -> Source:
    """The format of `path`, or a UserError that says what is missing."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return Source(GGUF, path)
        raise UserError(f"{path} is a file but not a .gguf; for other formats give the model's directory")
    names = {p.name for p in path.iterdir()}
    if "adapter_config.json" in names:
        return Source(PEFT, path)
    # `litgpt finetune lora` writes the adapter beside a merged lit_model.pth: with --base the
    # adapter is what the user means.
    if "lit_model.pth.lora" in names and (base_given or "lit_model.pth" not in names):
        return Source(LITGPT_LORA, path)
    if "model_config.yaml" in names:
        return Source(LITGPT, path)
    if "config.json" in names:
        return Source(HF, path)
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
    if len(ggufs) == 1:
        return Source(GGUF, path / ggufs[0])
    if ggufs:
        raise UserError(f"{path} holds {len(ggufs)} GGUF files ({', '.join(ggufs[:4])}); import one of them by its path")
    raise UserError(f"{path} is not a model directory: no config.json, model_config.yaml, "
                    "adapter_config.json or *.gguf found")


#: What a pickled state dict may name: torch's tensor and storage rebuilders, and the containers.
_SAFE_GLOBALS = {("collections", "OrderedDict"), ("_codecs", "encode"), ("builtins", "set"),
                 ("builtins", "frozenset"), ("builtins", "bytearray")}


def pickled_callables(path: Path) -> list[str]:
    """Every module.name a PyTorch pickle would import, read from its opcodes without running it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                streams = [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
        else:  # the legacy format: a few pickles in a row, then raw storage bytes
            streams = [path.read_bytes()]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    found: list[str] = []
    for data in streams:
        stream = io.BytesIO(data)
        for _ in range(5):
            if stream.tell() >= len(data):
                break
            try:
                found += _globals(stream)
            except Exception:  # the bytes after the last pickle of a legacy file
                break
    return found


def _globals(stream: io.BytesIO) -> list[str]:
    """GLOBAL and STACK_GLOBAL references of one pickle; the memo is followed for the latter."""
    out: list[str] = []
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            out.append(str(arg).replace(" ", ".", 1))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            module, name = pushed[-2:] if len(pushed) >= 2 else (None, None)
            out.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "<computed>")
            pushed.append(None)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(cast(int, arg))] = pushed[-1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(cast(int, arg))))
        else:
            pushed.append(None)
    return out


def check_pickle(path: Path, advice: str) -> None:
    """Refuse, before any run starts, a pickle that names anything but tensors and containers.

    Only a fast first look: the worker still loads with `torch.load(weights_only=True)`.
    """
    for ref in pickled_callables(path):
        module, _, name = ref.rpartition(".")
        if module != "torch" and not module.startswith("torch.") and (module, name) not in _SAFE_GLOBALS:
            raise UserError(f"{path} holds pickled Python objects besides tensors ({ref}), and workbench never "
                            f"unpickles them; {advice}")


_PRETRAIN_ADVICE = ("if you trust the file, run `litgpt convert_pretrained_checkpoint` on its directory "
                    "and import the result")
_BIN_ADVICE = "use the model's safetensors weights instead"


def check_files(source: Source) -> None:
    """Cheap checks of every weights file the import will read."""
    from workbench.weightfiles import check_gguf, check_safetensors

    if source.format == GGUF:
        with source.path.open("rb") as fh:
            magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise UserError(f"{source.path} is not a GGUF file (it does not start with the GGUF magic)")
        check_gguf(source.path)
        return
    for st in sorted(source.path.glob("*.safetensors")):
        check_safetensors(st)
    needs = {
        HF: ("tokenizer.json", "tokenizer.model"),
        LITGPT: ("tokenizer.json", "tokenizer.model"),
    }.get(source.format)
    if needs and not any((source.path / n).exists() for n in needs):
        raise UserError(f"{source.path} has no tokenizer.json or tokenizer.model; LitGPT needs one of them")
    if source.format == LITGPT and not any((source.path / n).exists() for n in ("lit_model.pth", "model.safetensors")):
        raise UserError(f"{source.path} has model_config.yaml but no weights (lit_model.pth or model.safetensors)")
    if source.format == PEFT and not any((source.path / n).exists()
                                          for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(f"{source.path} has adapter_config.json but no adapter_model.safetensors")
    for path, advice in _pickles(source):
        check_pickle(path, advice)


def _pickles(source: Source) -> list[tuple[Path, str]]:
    """The pickled weight files the import would load (only where no safetensors stand in)."""
    root = source.path
    if source.format == HF and not any(root.glob("*.safetensors")):
        return [(p, _BIN_ADVICE) for p in sorted(root.glob("pytorch_model*.bin"))]
    if source.format == LITGPT and not (root / "model.safetensors").exists():
        return [(root / "lit_model.pth", _PRETRAIN_ADVICE)]
    if source.format == LITGPT_LORA:
        return [(root / "lit_model.pth.lora", _PRETRAIN_ADVICE)]
    if source.format == PEFT and not (root / "adapter_model.safetensors").exists():
        return [(root / "adapter_model.bin", _BIN_ADVICE)]
    return []
