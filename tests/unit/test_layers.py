"""The import contracts in .importlinter name every plugin, so a new plugin is held to them."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _names(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip()}


def test_every_plugin_is_named_in_the_import_contracts() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter", encoding="utf-8")
    plugins = {p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")}
    assert plugins, "no plugin packages found under plugins/"
    places = {
        "root_packages": _names(config["importlinter"]["root_packages"]),
        "core-knows-no-plugin forbidden_modules":
            _names(config["importlinter:contract:core-knows-no-plugin"]["forbidden_modules"]),
        "plugins-import-no-face source_modules":
            _names(config["importlinter:contract:plugins-import-no-face"]["source_modules"]),
    }
    missing = {where: sorted(plugins - names) for where, names in places.items() if plugins - names}
    assert not missing, f".importlinter does not name every plugin: add {missing}"
