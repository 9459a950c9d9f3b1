"""The model names `--model` takes, checked without importing litgpt (or torch, which it imports).

LitGPT builds its config table in Python at import time, so its names cannot be read from the
source text. They are listed once by a child process and cached in the user cache directory,
keyed by the installed litgpt version; the caller only reads a JSON file.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from workbench.errors import UserError
from workbench_pretrain.presets import PRESETS

#: What the child prints: LitGPT's config names, and every spelling `Config.from_name` accepts.
#: `litgpt/config.py` imports nothing of litgpt, so it is run on its own, without the package
#: (which imports torch and Lightning: seconds); a release where that fails is imported whole.
_LIST = """
import importlib.util, json
spec = importlib.util.find_spec("litgpt")
try:
    path = spec.submodule_search_locations[0] + "/config.py"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("litgpt_config_table", path))
    module.__spec__.loader.exec_module(module)
    configs = module.configs
except Exception:
    from litgpt.config import configs
names = [c["name"] for c in configs]
hf = [c["hf_config"]["name"] for c in configs if c.get("hf_config")]
orgs = [c["hf_config"]["org"] + "/" + c["hf_config"]["name"] for c in configs if c.get("hf_config")]
print(json.dumps({"names": names, "accepted": sorted(set(names + hf + orgs))}))
"""


def _cache_path(version: str) -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_path("workbench", appauthor=False)) / f"litgpt-{version}-configs.json"


def litgpt_config_names() -> tuple[list[str], set[str]] | None:
    """LitGPT's config names (as its table orders them) and every spelling `Config.from_name`
    accepts; None when litgpt is not installed or cannot list them."""
    try:
        version = metadata.version("litgpt")
    except metadata.PackageNotFoundError:
        return None
    path = _cache_path(version)
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        out = subprocess.run([sys.executable, "-c", _LIST], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            return None
        listed = json.loads(out.stdout)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(listed), encoding="utf-8")
        tmp.replace(path)  # whole or not at all, even with two callers at once
    return list(listed["names"]), set(listed["accepted"])


def check_model_name(spec: str) -> None:
    """Refuse a `--model` that is neither a preset, a LitGPT config name nor a YAML file, naming
    the valid ones."""
    if spec in PRESETS or spec.endswith((".yaml", ".yml")):
        return
    litgpt = litgpt_config_names()
    if litgpt is None:  # nothing to check against; the run says what LitGPT thinks of it
        return
    names, accepted = litgpt
    if spec in accepted:
        return
    close = difflib.get_close_matches(spec, [*PRESETS, *names], n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UserError(
        f"unknown model '{spec}'{hint}: --model takes a preset ({', '.join(PRESETS)}), "
        f"a .yaml file or one of LitGPT's {len(names)} config names: {', '.join(names)}"
    )
