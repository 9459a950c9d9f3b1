"""The Stage contract and plugin discovery.

A stage is a class registered under the entry-point group `workbench.stages`; the entry-point
name is the stage name, and a dotted name (`data.prepare`) becomes a nested CLI command
(`workbench data prepare`). Built-in stages in `plugins/` register exactly like third-party ones.

Plugin modules must stay light at import time: torch, litgpt and llama_cpp are imported inside
`run()`. Listing plugins never fails because one of them is broken: it is reported and skipped.

Plugins may also add plain commands (`workbench chat`) under `workbench.commands`; the entry point
names a `Command` object. A stage may offer `finders`: searches an option's value can come from
(the Hub, say), which the TUI shows next to that option.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from zlib import crc32

from workbench.errors import UserError

if TYPE_CHECKING:
    import argparse
    import importlib.metadata as md

    from workbench.context import Context

STAGE_GROUP = "workbench.stages"
COMMAND_GROUP = "workbench.commands"


@dataclass(frozen=True)
class Finder:
    """A search that fills one option of a stage: the TUI offers it beside the option.

    `search(query, limit)` returns rows of plain values, best first; the row's `fills` key becomes
    the option's value. It runs on a thread of the UI process, so it imports no model library,
    and it raises UserError for what the user can fix (offline, unreachable).
    """

    option: str
    title: str
    search: Callable[[str, int], list[dict[str, Any]]]
    #: (row key, header, kind); kind is "text", "count" (1.2k), "bytes" (1.5 GiB) or "flag" (yes/blank)
    columns: tuple[tuple[str, str, str], ...]
    fills: str = "id"

    @staticmethod
    def cell(value: Any, kind: str) -> str:
        """A row value as the tables show it."""
        if value is None or value == "":
            return "—" if kind != "flag" else ""
        if kind == "count":
            n = float(value)
            for unit in ("", "k", "M", "B"):
                if abs(n) < 1000 or unit == "B":
                    return f"{n:.0f}{unit}" if not unit or n >= 100 else f"{n:.1f}{unit}"
                n /= 1000
        if kind == "bytes":
            from workbench.hardware import fmt_bytes

            return fmt_bytes(float(value))
        if kind == "flag":
            return "yes" if value else ""
        return str(value)


class Stage:
    """Base class for a lifecycle stage.

    Subclasses set the class attributes and implement `run`. Everything a stage reports goes
    through `ctx` (progress, metrics, logs, checkpoints, artifacts); `run` returns a small
    JSON-able result, which may carry `tables` ({title, columns, rows}) for the faces to show.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: Longer help shown under `workbench STAGE --help` (presets, examples).
    description: ClassVar[str] = ""
    consumes: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type]
    supports_resume: ClassVar[bool] = False
    supports_cancel: ClassVar[bool] = True
    needs_gpu: ClassVar[bool] = False
    finders: ClassVar[tuple[Finder, ...]] = ()

    def validate(self, options: Any, ctx: Context) -> None:
        """Cheap checks run in the caller's process before a run is created (no heavy imports).

        Raise UserError for bad input so nothing is written to the workspace.
        """

    def run(self, options: Any, ctx: Context) -> dict[str, Any] | None:
        raise NotImplementedError


@dataclass
class Command:
    """A plugin command that is not a run (chat, serve, predict)."""

    name: str
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]
    description: str = ""


@dataclass
class PluginInfo:
    name: str
    value: str
    group: str
    package: str
    version: str
    status: str = "not loaded"
    error: str = ""
    obj: Any = field(default=None, repr=False)
    #: The summary recorded in the plugin index, so help can show it without an import.
    indexed_summary: str = ""
    #: The import error recorded in the plugin index ("" when the plugin loaded).
    indexed_error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def summary(self) -> str:
        return getattr(self.obj, "summary", "") if self.obj is not None else self.indexed_summary


def _entry_points(group: str) -> list[md.EntryPoint]:
    import importlib.metadata as md

    eps = md.entry_points(group=group)
    seen: dict[str, md.EntryPoint] = {}
    for ep in eps:
        # An editable install and a stale copy can both advertise a name: first on sys.path wins.
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def _info(ep: md.EntryPoint, group: str) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        name=ep.name,
        value=ep.value,
        group=group,
        package=dist.metadata["Name"] if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )


def discover(group: str = STAGE_GROUP) -> list[PluginInfo]:
    """The installed plugins of `group`, from the plugin index: nothing is imported."""
    return [PluginInfo(**{k: v for k, v in entry.items() if k != "files"})
            for entry in _plugin_index() if entry["group"] == group]


# ----------------------------------------------------------------------------------------------
# The plugin index: entry points and summaries without importing importlib.metadata or a plugin.
#
# Reading entry points scans every installed distribution, and summaries live in the plugin
# modules; together they cost `workbench --help` most of its time. The index records both, with
# what they were read from: the metadata directories of the distributions in each sys.path entry,
# with their modification times (installing, upgrading or removing a distribution, editable ones
# included, adds, renames or rewrites one), and the modification time of every source file a
# summary came from. A later process reuses it only if all of these are unchanged, so it cannot
# go stale; otherwise it scans again and rewrites it.

_INDEX_FORMAT = 3


def _index_key() -> str:
    return json.dumps([_INDEX_FORMAT, sys.executable, sys.version, sys.path])


def _index_path(key: str) -> Path:
    import platformdirs

    # One file per interpreter and import path; the key inside settles a checksum collision.
    name = f"plugins-{crc32(key.encode()):08x}.json"
    return Path(platformdirs.user_cache_path("workbench", appauthor=False)) / name


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


#: What importlib.metadata reads distributions from, in each sys.path directory.
_DIST_SUFFIXES = (".dist-info", ".egg-info", ".egg")


def _installed() -> dict[str, Any]:
    """Per sys.path entry, its distributions' metadata directories and their modification times."""
    stamp: dict[str, Any] = {}
    for entry in sys.path:
        path = os.path.abspath(entry) if entry else os.getcwd()
        try:
            with os.scandir(path) as found:
                stamp[entry] = sorted([e.name, e.stat().st_mtime_ns] for e in found if e.name.endswith(_DIST_SUFFIXES))
        except OSError:  # a zip file, or absent
            stamp[entry] = _mtime(path)
    return stamp


def _plugin_index() -> list[dict[str, Any]]:
    key = _index_key()
    path = _index_path(key)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if (cached["key"] == key and cached["installed"] == _installed()
                and all(_mtime(f) == m for entry in cached["plugins"] for f, m in entry["files"].items())):
            return cached["plugins"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    installed = _installed()  # before the scan: a change during it makes the next look scan again
    plugins = [_index_entry(_info(ep, group)) for group in (STAGE_GROUP, COMMAND_GROUP)
               for ep in _entry_points(group)]
    if all(entry["files"] for entry in plugins):  # without its files an entry could go stale
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": key, "installed": installed, "plugins": plugins}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only cache only costs speed
            tmp.unlink(missing_ok=True)
    return plugins


def _index_entry(info: PluginInfo) -> dict[str, Any]:
    """What the index keeps of one plugin, loaded once to read its summary."""
    load(info)
    modules = {info.value.partition(":")[0]}
    if info.obj is not None:  # a summary may be inherited: every class it could come from
        cls = info.obj if isinstance(info.obj, type) else type(info.obj)
        modules.update(c.__module__ for c in cls.__mro__)
    files = {}
    for name in modules:
        origin = getattr(sys.modules.get(name), "__file__", None) or _origin(name)
        if origin:
            files[origin] = _mtime(origin)
    return {"name": info.name, "value": info.value, "group": info.group, "package": info.package,
            "version": info.version, "indexed_summary": info.summary,
            "indexed_error": info.error, "files": files}


def _origin(module: str) -> str | None:
    """The source file of a module that failed to import, if it can be found."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # its parent package is broken too
        return None
    return spec.origin if spec is not None and spec.has_location else None


def load(info: PluginInfo) -> PluginInfo:
    """Import a plugin; a failure is recorded on `info`, never raised."""
    if info.obj is not None or info.status not in ("not loaded",):
        return info
    module_name, _, attr = info.value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # a broken plugin must not take the host down
        info.status, info.error = "error", f"{type(exc).__name__}: {exc}"
        return info
    if info.group == STAGE_GROUP:
        problem = _check_stage(obj)
        if problem:
            info.status, info.error = "error", problem
            return info
    elif not isinstance(obj, Command):
        info.status, info.error = "error", f"{info.value} is not a workbench.stages.Command"
        return info
    info.obj, info.status = obj, "ok"
    return info


def _check_stage(obj: Any) -> str:
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        return "entry point is not a workbench.stages.Stage subclass"
    if not getattr(obj, "Options", None):
        return "stage declares no Options dataclass"
    return ""


def all_plugins(load_all: bool = True) -> list[PluginInfo]:
    infos = discover(STAGE_GROUP) + discover(COMMAND_GROUP)
    if load_all:
        for info in infos:
            load(info)
    return infos


def get_stage(name: str) -> type[Stage]:
    """The Stage class named `name`, or a UserError listing the known stages."""
    infos = {i.name: i for i in discover(STAGE_GROUP)}
    if name not in infos:
        known = ", ".join(sorted(infos)) or "none installed"
        raise UserError(f"unknown stage '{name}'; known stages: {known}")
    info = load(infos[name])
    if not info.ok:
        raise UserError(f"stage '{name}' from {info.package} cannot be loaded: {info.error}")
    return info.obj
