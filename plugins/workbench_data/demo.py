"""The embedded demo data: nothing is downloaded.

- `pretrain`: assembled here and now from the docstrings of the installed Python standard
  library (read with `ast`, so no module is imported or run), plus templated prose from
  `assets/generate.py` (copy drills, worksheets and prose that practise the instruction tasks'
  skills on training-side instances). The generator's share is `GENERATED_SHARE` of the budget, and it fills whatever the
  standard library cannot.
- `instruction`, `preference`, `classification`: the JSONL files `assets/generate.py` wrote,
  with the held-out validation split it fixed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import random
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from workbench import locations
from workbench.errors import UserError
from workbench_data.readers import Record

DEMOS = ("pretrain", "instruction", "preference", "classification")
GENERATED_SHARE = 0.85
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "turtledemo", "_bundled"}


def assets_dir() -> Path:
    path = locations.assets_dir()
    if not (path / "generate.py").exists():
        raise UserError(
            f"the demo data is missing ({path / 'generate.py'} not found); reinstall workbench"
        )
    return path


def generator() -> ModuleType:
    """`assets/generate.py`, imported from its file (it is a script, not a package module)."""
    path = assets_dir() / "generate.py"
    spec = importlib.util.spec_from_file_location("workbench_demo_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def split_files(kind: str) -> tuple[Path, Path]:
    """(train file, held-out validation file) of a supervised demo set."""
    data = assets_dir() / "data"
    train, val = data / f"{kind}.train.jsonl", data / f"{kind}.val.jsonl"
    if not train.exists() or not val.exists():
        raise UserError(f"demo files for '{kind}' are missing in {data}; run `python assets/generate.py`")
    return train, val


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_docstrings(seed: int, n_chars: int, progress: Callable[[int, int], None] | None = None) -> Iterator[Record]:
    """Docstrings of the standard library's modules, classes and functions, about `n_chars` in
    all, from files taken in a seeded order (so a small budget still spans many modules).

    Parsing the whole library takes seconds, so a complete pass is kept in the workspace cache
    and later runs read that instead.
    """
    root = stdlib_root()
    cache = locations.cache_dir() / "demo" / f"stdlib-docstrings-{_stdlib_key(root)}.json"
    by_file: dict[str, list[tuple[int, str]]] | None = None
    if cache.exists():
        by_file = json.loads(cache.read_text(encoding="utf-8"))
    files = sorted(by_file) if by_file is not None else _stdlib_files(root)
    random.Random(seed).shuffle(files)
    parsed: dict[str, list[tuple[int, str]]] = {}
    total = 0
    for i, rel in enumerate(files):
        if total >= n_chars:
            break
        if progress is not None:
            progress(i, len(files))
        docs = by_file[rel] if by_file is not None else _file_docstrings(root / rel)
        parsed[rel] = docs
        for line, doc in docs:
            total += len(doc)
            yield Record(doc, f"stdlib/{rel}:{line}", "python-stdlib")
    if by_file is None and len(parsed) == len(files):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(parsed), encoding="utf-8")
        os.replace(tmp, cache)


def _stdlib_key(root: Path) -> str:
    return hashlib.sha256(f"{sys.version}\0{root}".encode()).hexdigest()[:16]


def _stdlib_files(root: Path) -> list[str]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        files += [Path(folder, n).relative_to(root).as_posix() for n in sorted(names) if n.endswith(".py")]
    return files


def _file_docstrings(path: Path) -> list[tuple[int, str]]:
    try:
        with warnings.catch_warnings():  # old escape sequences in a few files
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # a file this Python cannot parse (e.g. a lib2to3 fixture) adds nothing
    out = []
    for node in _definitions(tree):
        doc = ast.get_docstring(node)
        if doc:
            out.append((getattr(node, "lineno", 1), doc))
    return out


_Def = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _definitions(node: ast.AST) -> Iterator[_Def]:
    """The module and every class and function in it, walking statements only (docstrings never
    live inside expressions, and skipping those is most of the speed)."""
    if isinstance(node, _Def):
        yield node
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, name, ()):
            if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                yield from _definitions(child)


def pretrain_records(seed: int, n_chars: int, progress: Callable[[int, int], None] | None = None) -> list[Record]:
    gen = generator()
    generated_budget = int(n_chars * GENERATED_SHARE)
    records = list(stdlib_docstrings(seed, n_chars - generated_budget, progress))
    have = sum(len(r.value) for r in records)
    generated_budget = max(generated_budget, n_chars - have)
    docs = gen.pretrain_documents(seed, generated_budget)
    records += [Record(d, f"generated #{i + 1}", "workbench-generator") for i, d in enumerate(docs)]
    return records


def describe(kind: str) -> str:
    if kind == "pretrain":
        return (f"Python {sys.version.split()[0]} standard library docstrings + templated statements "
                "from assets/generate.py")
    return f"assets/data/{kind}.train.jsonl and {kind}.val.jsonl (assets/generate.py, fixed seed)"
