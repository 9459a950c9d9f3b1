"""GGUF repositories: one file kept as a `gguf` artifact, ready for chat with llama.cpp."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UserError
from workbench.prompts import check_chat_template
from workbench_download.fetch import existing_ancestor, matches

if TYPE_CHECKING:
    from workbench.context import Context
    from workbench.store import Artifact
    from workbench_download.fetch import Downloader
    from workbench_download.stage import Options

_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def choose_gguf(files: list[str], pattern: str, repo_id: str) -> str:
    """The one GGUF file `pattern` names: a glob, or a part of the name such as Q4_K_M."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if not ggufs:
        raise UserError(f"{repo_id} has no GGUF files; leave out --gguf-file to convert its weights instead")
    patterns = [pattern] if any(c in pattern for c in "*?[") else [f"*{pattern}*"]
    chosen = [f for f in ggufs if matches(f, patterns)]
    listing = ", ".join(ggufs[:8]) + (", …" if len(ggufs) > 8 else "")
    if not chosen:
        raise UserError(f"no GGUF file in {repo_id} matches '{pattern}'; its GGUF files: {listing}")
    if len(chosen) > 1:
        raise UserError(f"'{pattern}' matches {len(chosen)} files in {repo_id} ({', '.join(chosen[:6])}); "
                        "give a pattern that matches one")
    if _SPLIT.search(chosen[0]):
        raise UserError(f"{chosen[0]} is one part of a split GGUF, which workbench does not assemble; "
                        "pick a quantization published as a single file")
    return chosen[0]


def inspect_gguf(path: Path, shown_name: str) -> dict[str, Any]:
    """What the file says about itself; a file the gguf reader cannot parse is refused."""
    from gguf import GGUFReader, LlamaFileType

    from workbench.weightfiles import check_gguf

    check_gguf(path, shown_name)
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError, …
        raise UserError(f"{shown_name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    def field(key: str) -> Any:
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    arch = field("general.architecture")
    file_type = field("general.file_type")
    try:
        type_name = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        type_name = str(file_type)
    template = field("tokenizer.chat_template")
    if isinstance(template, str):  # a hostile template is refused before the file is kept
        check_chat_template(template, origin=f"model {shown_name} (tokenizer.chat_template of {shown_name})")
    return {
        "architecture": arch, "model_name": field("general.name"), "file_type": type_name,
        "context_length": field(f"{arch}.context_length"), "tensors": len(reader.tensors),
        "chat_template": template is not None,
    }


def _link_or_copy(src: Path, dst: Path) -> bool:
    """A hard link shares the cache's bytes (one copy on disk); another filesystem gets a copy."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def _same_device(a: Path, b: Path) -> bool:
    return existing_ancestor(a).stat().st_dev == existing_ancestor(b).stat().st_dev


def keep_gguf(dl: Downloader, options: Options, ctx: Context) -> Artifact:
    from workbench import locations

    assert options.gguf_file is not None
    path = choose_gguf(dl.candidates(), options.gguf_file, dl.repo_id)
    size = dl.listing.files[path].size or 0
    linked_possible = _same_device(dl.cache_dir, locations.kind_dir("gguf"))
    dl.preflight([path], 0 if linked_possible else size, "workspace copy")
    local = dl.fetch([path])[path]
    files = dl.verify([path])
    info = inspect_gguf(local, path)
    name = path.rsplit("/", 1)[-1]
    ctx.log(f"{name}: {info['architecture']} {info['file_type'] or ''}, context {info['context_length']}")

    staged = ctx.staging_dir("gguf")
    try:
        linked = _link_or_copy(local.resolve(), staged / name)
        art = ctx.register(
            "gguf", staged / name, name=options.name or f"{dl.repo_id}:{name}", filename=name,
            metadata={**dl.source_metadata(files), "gguf": info, "linked_to_hf_cache": linked},
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # empty once the file is registered
    ctx.log(f"registered gguf {art.id} from {dl.repo_id}@{dl.listing.commit[:12]}"
            + (" (hard link into the Hugging Face cache: one copy on disk)" if linked else ""))
    return art
