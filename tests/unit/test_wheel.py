"""A built wheel carries everything an installed workbench reads: the assets, the plugins'
data files, the TUI's styles and every module an entry point names."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", *paths],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def test_wheel_ships_assets_data_files_and_every_entry_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in _tracked():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("workbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assets = [rel for rel in _tracked("assets") if "__pycache__" not in rel]
    assert {"assets/data/instruction.train.jsonl", "assets/mc/workbench-mc.jsonl"} <= set(assets)
    expected = {"workbench_assets/" + rel.removeprefix("assets/") for rel in assets}
    expected |= {p.removeprefix("plugins/") for p in _tracked("plugins") if p.endswith((".txt", ".json", ".jsonl"))}
    expected |= set(_tracked("workbench", "--", "*.tcss"))
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"

    (dist_info,) = {n.split("/")[0] for n in names if n.endswith(".dist-info/entry_points.txt")}
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.read_string(zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode())
    modules = {ref.split(":")[0].strip() for group in entry_points.sections()
               for ref in entry_points[group].values()}
    assert "workbench_data.stage" in modules
    missing = sorted(m for m in modules if m.replace(".", "/") + ".py" not in names)
    assert not missing, f"entry points name modules the wheel lacks: {missing}"
