"""Listings a user copies ids from: `models ls` and `runs ls` never cut an id short."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("columns", ["80", "60"])
def test_ids_are_whole_in_a_narrow_pipe(workspace, columns):
    for demo, name in (("instruction", "a-rather-long-dataset-name-that-needs-room"), ("classification", None)):
        extra = ("--name", name) if name else ()
        assert run_cli("data", "prepare", "--demo", demo, *extra).returncode == 0

    env = {"COLUMNS": columns}
    for listing in (("models", "ls"), ("runs", "ls")):
        ids = [item["id"] for item in json.loads(run_cli(*listing, "--json").stdout)]
        assert len(ids) == 2
        out = run_cli(*listing, env=env)
        assert out.returncode == 0, out.stderr
        assert "…" not in out.stdout
        for line in out.stdout.splitlines():
            assert len(line.rstrip()) <= int(columns)
        assert all(i in out.stdout for i in ids), out.stdout


def test_a_narrow_models_listing_leaves_columns_out_instead_of_breaking_words(workspace):
    assert run_cli("data", "prepare", "--demo", "classification", "--name", "spam-or-ham-messages").returncode == 0
    (art,) = json.loads(run_cli("models", "ls", "--json").stdout)
    narrow = run_cli("models", "ls", env={"COLUMNS": "80"}).stdout
    row = next(line for line in narrow.splitlines() if art["id"] in line)
    assert art["kind"] in row and art["name"] in row  # whole, on the id's own line
    assert "left out for the terminal's width" in narrow and "created" not in narrow.split("\n")[1]
    wide = run_cli("models", "ls", env={"COLUMNS": "200"}).stdout
    assert "left out" not in wide and "created" in wide and "key metrics" in wide
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(art["created_at"]))
    assert created in next(line for line in wide.splitlines() if art["id"] in line)
