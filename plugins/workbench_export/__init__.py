"""GGUF export: native writer, llama.cpp quantization, verification against LitGPT, Ollama files.

Light package: importing it (or `workbench_export.stage`) pulls in no torch, gguf or llama_cpp.
The library modules are heavy and meant to be imported inside functions:

- `workbench_export.gguf_writer.write_gguf(model_dir, out_path, out_type="f16", progress=None)`
- `workbench_export.quantize.quantize(src, dst, qtype)`
- `workbench_export.verify`: `Reference.build(...)`, `verify_gguf(...)`, `tokenizer_agreement(...)`
- `workbench_export.templates.modelfile(...)`: the Ollama Modelfile
"""

from __future__ import annotations

from pathlib import Path


def gguf_file(path: Path | str) -> Path:
    """The `.gguf` file of a `gguf` artifact (its directory also holds the Ollama `Modelfile`)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path} holds {len(found)} .gguf files, expected exactly one")
    return found[0]
