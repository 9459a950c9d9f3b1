"""Entry points as this checkout's pyproject.toml declares them, for the tests' processes.

An editable install records entry points when it is installed; a stage added since then is
invisible until `pip install -e .` runs again. A `workbench` dist-info written from the current
pyproject.toml, first on the path, makes discovery see the checkout as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def write_dist_info(site: Path) -> Path:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = site / f"workbench-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: workbench\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return site


@pytest.fixture(scope="session")
def checkout_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dist_info(tmp_path_factory.mktemp("checkout-site"))


@pytest.fixture
def checkout_entry_points(checkout_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process and its subprocesses discover the checkout's stages."""
    monkeypatch.syspath_prepend(str(checkout_site))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(checkout_site), old) if p))
    return checkout_site
