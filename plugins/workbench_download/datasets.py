"""`workbench download --dataset`: a Hub dataset repository becomes a prepared `dataset` artifact.

The repository's data files (Parquet, JSONL, JSON, CSV) are found the way the Hub's dataset
viewer finds them: the `configs:` section of the dataset card's YAML front matter when there is
one, else the file layout (`data/SPLIT-00000-of-00001.parquet`, `CONFIG/SPLIT-*.parquet`,
`CONFIG/SPLIT/*.parquet`, `SPLIT.jsonl`, any other data file as the train split). Files go
through the `Downloader` into the standard cache (`datasets--owner--name`), then through the
same pipeline as `workbench data prepare`, so one command ends with a dataset that
`finetune lora` or `dpo` accepts. Loading scripts (`*.py`) are never downloaded or run; a
repository that has nothing else falls back to the Hub's own Parquet conversion
(`refs/convert/parquet`) when it has one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.context import Context
from workbench.errors import Cancelled, UserError
from workbench.hardware import fmt_bytes

if TYPE_CHECKING:
    from workbench_download.fetch import Downloader
    from workbench_download.stage import Options

#: Data formats `data prepare` reads, in the order preferred when a split has several.
FORMATS = (".parquet", ".jsonl", ".json", ".csv")
PARQUET_BRANCH = "refs/convert/parquet"
#: JSON files that describe a dataset rather than hold it.
_METADATA_FILES = {"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"}
_SPLIT_WORDS = ("train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation")
_HELD_OUT = ("validation", "valid", "val", "dev")
# SPLIT-00000-of-00002, with the content hash older uploads appended, or SPLIT-0 / SPLIT_1.
_SHARD = re.compile(r"^(?P<split>.+?)(?:[-_]\d{5}-of-\d{5}(?:-[0-9a-f]{8,})?|[-_]\d+)$")
# Parquet holds text compressed; as JSONL rows in the workspace it takes a few times the bytes.
_EXPANSION = {".parquet": 4.0}

Layout = dict[str, dict[str, list[str]]]  # config -> split -> files


# --- finding the data files --------------------------------------------------------------------


def layout(files: Iterable[str], card: dict[str, Any]) -> tuple[Layout, str | None]:
    """The configs and splits of a repository, and the config its card marks as the default."""
    data = [f for f in files if _is_data(f)]
    configs = card.get("configs")
    if isinstance(configs, list) and configs:
        return _from_card(configs, data)
    found: Layout = {}
    for path in data:
        config, split = _place(path)
        found.setdefault(config, {}).setdefault(split, []).append(path)
    return {c: {s: _one_format(fs) for s, fs in splits.items()} for c, splits in found.items()}, None


def _is_data(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    hidden = any(part.startswith(".") for part in path.split("/"))
    return path.lower().endswith(FORMATS) and not hidden and name not in _METADATA_FILES


def _from_card(configs: list[Any], data: list[str]) -> tuple[Layout, str | None]:
    """`configs: [{config_name, data_files, default}]`; data_files is a pattern, a list of
    patterns (the train split), or a list of {split, path} where path is a pattern or a list."""
    out: Layout = {}
    default = None
    for entry in configs:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("config_name", "default"))
        if entry.get("default"):
            default = name
        spec = entry.get("data_files", [])
        if isinstance(spec, (str, list)) and not (isinstance(spec, list) and spec and isinstance(spec[0], dict)):
            splits = {"train": spec}
        elif isinstance(spec, dict):
            splits = spec
        else:
            splits = {str(s.get("split", "train")): s.get("path", []) for s in spec if isinstance(s, dict)}
        out[name] = {}
        for split, patterns in splits.items():
            pats = [patterns] if isinstance(patterns, str) else [str(p) for p in patterns]
            out[name][str(split)] = _one_format([f for f in data if any(_matches(f, p) for p in pats)])
    return out, default


def _matches(path: str, pattern: str) -> bool:
    pattern = pattern.removeprefix("./")
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern.rstrip("/") + "/")


def _place(path: str) -> tuple[str, str]:
    """(config, split) of a data file from where it lies and how it is named."""
    parts = path.split("/")
    if len(parts) == 1:
        return "default", _split_of(parts[0])
    if parts[0] == "data" or _split_word(parts[0]):
        config, rest = "default", parts[1:] if parts[0] == "data" else parts
    else:
        config, rest = parts[0], parts[1:]  # CONFIG/SPLIT-*.parquet, as the Parquet conversion lays it out
    return config, rest[0] if len(rest) > 1 else _split_of(rest[0])


def _split_of(name: str) -> str:
    """`train-00000-of-00002.parquet` → train; `test.jsonl` → test; `alpaca_data.json` → train.
    A sharded file's split is any name (`train_prefs-00000-of-00001.parquet`)."""
    stem = name.rsplit(".", 1)[0]
    shard = _SHARD.match(stem)
    if shard:
        return shard["split"]
    return stem if _split_word(stem) else "train"


def _split_word(name: str) -> bool:
    low = name.lower()
    return any(low == w or (low.startswith(w) and low[len(w)] in "-_. ") for w in _SPLIT_WORDS)


def _one_format(files: list[str]) -> list[str]:
    """A split published in several formats is read from the most convenient one only."""
    for suffix in FORMATS:
        chosen = sorted(f for f in files if f.lower().endswith(suffix))
        if chosen:
            return chosen
    return []


def choose(found: Layout, default: str | None, repo: str, config: str | None,
           split: str | None) -> tuple[str, str, str | None]:
    """(config, split, held-out split or None): the ones asked for, or the obvious ones."""
    names = sorted(found)
    if config is None:
        if default is not None and default in found:
            config = default
        elif "default" in found or len(names) == 1:
            config = "default" if "default" in found else names[0]
        else:
            raise UserError(f"{repo} has {len(names)} configs ({', '.join(names)}); pick one with --subset NAME")
    elif config not in found:
        raise UserError(f"{repo} has no config '{config}'; its configs are: {', '.join(names)}")
    splits = {s: fs for s, fs in found[config].items() if fs}
    listed = ", ".join(sorted(splits)) or "none with data files"
    if split is None:
        if "train" in splits or len(splits) == 1:
            split = "train" if "train" in splits else next(iter(splits))
        else:
            raise UserError(f"{repo} (config {config}) has the splits {listed}; pick one with --split NAME")
    elif split not in splits:
        raise UserError(f"{repo} (config {config}) has no split '{split}'; its splits are: {listed}")
    # A published validation split beats a random one when the training split is used.
    held_out = next((s for s in _HELD_OUT if s in splits), None) if split == "train" else None
    return config, split, held_out


# --- the stage's work --------------------------------------------------------------------------


def download_dataset(options: Options, ctx: Context) -> dict[str, Any]:
    """Fetch the chosen split and prepare it."""
    from workbench_download.fetch import DownloadInterrupted

    downloader, has_card, found, default = _open(options, ctx)
    config, split, held_out = choose(found, default, options.repo_id, options.subset, options.split)
    train_files, val_files = found[config][split], found[config][held_out] if held_out else []
    if held_out:
        ctx.log(f"using the '{held_out}' split for validation")
    wanted = train_files + val_files
    sizes = {f: downloader.listing.files[f].size or 0 for f in wanted}
    workspace = sum(int(n * _EXPANSION.get(Path(f).suffix.lower(), 1.5)) for f, n in sizes.items())
    downloader.preflight(wanted, workspace, "prepared dataset")
    ctx.log(f"config {config}, split {split}: {len(wanted)} file{'' if len(wanted) == 1 else 's'}, "
            f"{fmt_bytes(sum(sizes.values()))}")
    try:
        local = downloader.fetch(wanted)
    except (Cancelled, DownloadInterrupted):
        downloader.checkpoint()  # `workbench runs resume` finishes the same commit
        raise
    records = downloader.verify((["README.md"] if has_card else []) + wanted)
    return _prepare(options, ctx, downloader, records, config, split, held_out,
                    [str(local[f]) for f in train_files], [str(local[f]) for f in val_files])


def _open(options: Options, ctx: Context) -> tuple[Downloader, bool, Layout, str | None]:
    """The repository's listing, its card and where its data files are."""
    from huggingface_hub.repocard import metadata_load

    from workbench_download.fetch import Downloader

    downloader = Downloader(options, ctx, repo_type="dataset")
    readme = _card_file(downloader)
    found, default = layout(downloader.listing.files, (metadata_load(readme) or {}) if readme else {})
    scripts = sorted(f for f in downloader.listing.files if f.endswith(".py"))
    if not any(fs for splits in found.values() for fs in splits.values()):
        downloader = _parquet_conversion(downloader, options, ctx, scripts)
        readme = None
        found, default = layout(downloader.listing.files, {})
    elif scripts:
        ctx.log(f"{', '.join(scripts)} not downloaded: workbench reads the data files and never runs "
                "loading scripts", level="warning")
    return downloader, readme is not None, found, default


def _card_file(downloader: Downloader) -> str | None:
    """The dataset card, fetched first: its front matter may name the data files."""
    if "README.md" not in downloader.listing.files:
        return None
    return str(downloader.fetch(["README.md"])["README.md"])


def _parquet_conversion(downloader: Downloader, options: Options, ctx: Context,
                        scripts: list[str]) -> Downloader:
    """The Hub's Parquet export of a repository without data files in a format we read."""
    from workbench_download.fetch import Downloader, RevisionMissing

    repo = options.repo_id
    what = (f"is built by a loading script ({', '.join(scripts)}), which workbench never runs" if scripts
            else f"holds no data files ({', '.join(FORMATS)})")
    if options.revision != "main":
        raise UserError(f"dataset {repo} {what}; pick a repository (or revision) that publishes "
                        "Parquet, JSONL, JSON or CSV files")
    try:
        converted = Downloader(dataclasses.replace(options, revision=PARQUET_BRANCH), ctx, repo_type="dataset")
    except RevisionMissing:
        raise UserError(f"dataset {repo} {what}, and the Hub has no Parquet conversion of it "
                        f"({PARQUET_BRANCH}); pick a repository that publishes Parquet, JSONL, JSON or "
                        "CSV files") from None
    ctx.log(f"dataset {repo} {what}; using the Hub's Parquet conversion ({PARQUET_BRANCH})")
    return converted


def _prepare(options: Options, ctx: Context, downloader: Downloader, files: list[dict[str, Any]],
             config: str, split: str, held_out: str | None, train: list[str], val: list[str]) -> dict[str, Any]:
    from workbench_data.columns import ROLES
    from workbench_data.prepare import prepare
    from workbench_data.stage import Options as PrepareOptions

    columns = {f"{role}_field": getattr(options, f"{role}_field") for role in (*ROLES, "text", "label")}
    prep = PrepareOptions(sources=train, val_sources=val, type=options.type, name=options.name or options.repo_id,
                          **columns)
    origin = {
        **downloader.source_metadata(files), "hf_config": config, "hf_split": split, "hf_val_split": held_out,
        "source": f"{options.repo_id}@{downloader.listing.commit[:12]} (config {config}, split {split}"
                  + (f", validation from {held_out})" if held_out else ")"),
    }
    result = prepare(prep, ctx, origin=origin)
    return {**result, "repo": options.repo_id, "revision": downloader.listing.commit, "config": config,
            "split": split}
