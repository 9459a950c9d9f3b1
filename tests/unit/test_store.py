"""The SQLite index: migrations, lineage, and consistent reads while another process writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from workbench.context import Context
from workbench.store import MIGRATIONS, Store


def test_migrations_apply_once_and_in_order(workspace):
    store = Store()
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    store.close()
    again = Store()  # reopening applies nothing twice
    assert again.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_lineage_walks_parents_with_the_runs_that_made_them(workspace):
    ctx = Context(Store())
    def make(kind, name, parents=()):
        d = ctx.staging_dir(kind)
        (d / "f.txt").write_text(name)
        return ctx.register(kind, d, name=name, parents=list(parents))
    data = make("dataset", "corpus")
    tok = make("tokenizer", "bpe")
    base = make("model", "base", [data.id, tok.id])
    tuned = make("model", "tuned", [base.id])
    chain = [(depth, a.name) for depth, a, _ in ctx.store.lineage(tuned.id)]
    assert chain == [(0, "tuned"), (1, "base"), (2, "corpus"), (2, "bpe")]
    assert [a.name for a in ctx.store.children(base.id)] == ["tuned"]
    assert ctx.store.find_artifact("tuned").id == tuned.id  # by name
    assert ctx.store.find_artifact(tuned.id[:-2]).id == tuned.id  # by unique prefix
    assert tuned.path.parent == workspace / "models" and not list((workspace / "models").glob(".staging-*"))


def test_reads_stay_consistent_while_another_process_writes(workspace):
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        from workbench.context import Context
        from workbench.store import Store
        ctx = Context(Store())
        for i in range(150):
            d = ctx.staging_dir("dataset")
            (d / "x").write_text(str(i))
            ctx.register("dataset", d, name=f"d{i}", metrics={"i": i})
    """)])
    store = Store()
    seen = 0
    while writer.poll() is None or seen < 150:
        arts = store.list_artifacts("dataset")
        # Every row read is complete, and rows only ever appear in order.
        assert [a.name for a in arts] == [f"d{i}" for i in range(len(arts))]
        assert all(a.metrics["i"] == int(a.name[1:]) and a.path.exists() for a in arts)
        seen = len(arts)
        if writer.poll() is not None and seen == 150:
            break
    assert writer.wait() == 0 and seen == 150
