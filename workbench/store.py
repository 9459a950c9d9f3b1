"""The workspace index: artifacts, runs, lineage and conversations in SQLite.

WAL mode lets faces read while a worker writes. The schema grows only through named,
append-only migrations; each is applied once and recorded in `migrations`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_runs_and_artifacts",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            stage TEXT NOT NULL,
            plugin TEXT NOT NULL,
            plugin_version TEXT NOT NULL,
            options TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            pid INTEGER,
            exit_reason TEXT,
            checkpoint TEXT,
            result TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            run_dir TEXT NOT NULL
        );
        CREATE INDEX runs_created ON runs(created_at);
        CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            path TEXT NOT NULL,
            run_id TEXT REFERENCES runs(id),
            created_at REAL NOT NULL,
            size_bytes INTEGER NOT NULL DEFAULT 0,
            metadata TEXT NOT NULL DEFAULT '{}',
            metrics TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX artifacts_name ON artifacts(name);
        CREATE TABLE artifact_parents (
            child_id TEXT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
            parent_id TEXT NOT NULL,
            PRIMARY KEY (child_id, parent_id)
        );
        """,
    ),
    (
        "002_conversations",
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            stats TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX messages_conversation ON messages(conversation_id, id);
        """,
    ),
    (
        "003_arena_votes",
        """
        CREATE TABLE arena_votes (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            voter TEXT NOT NULL,
            model_left TEXT NOT NULL,
            model_right TEXT NOT NULL,
            prompt TEXT NOT NULL,
            answer_left TEXT NOT NULL,
            answer_right TEXT NOT NULL,
            vote TEXT NOT NULL,
            seed INTEGER NOT NULL,
            of_vote TEXT REFERENCES arena_votes(id) ON DELETE SET NULL,
            details TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX arena_votes_created ON arena_votes(created_at);
        """,
    ),
]


def new_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%y%m%d')}-{secrets.token_hex(3)}"


@dataclass
class Artifact:
    id: str
    kind: str
    name: str
    path: Path
    run_id: str | None
    created_at: float
    size_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


@dataclass
class Run:
    id: str
    stage: str
    plugin: str
    plugin_version: str
    options: dict[str, Any]
    status: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    pid: int | None
    exit_reason: str | None
    checkpoint: str | None
    result: dict[str, Any] | None
    attempts: int
    run_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


class Store:
    """A connection to the workspace database. Cheap to open; use one per thread/process."""

    def __init__(self, path: Path | None = None):
        self.path = path or locations.db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in db.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM migrations ORDER BY name")]

    # runs ---------------------------------------------------------------------------------

    def add_run(self, run_id: str, stage: str, plugin: str, version: str, options: dict[str, Any], run_dir: Path) -> None:
        self.db.execute(
            "INSERT INTO runs (id, stage, plugin, plugin_version, options, status, created_at, run_dir)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (run_id, stage, plugin, version, json.dumps(options), time.time(), str(run_dir)),
        )

    def update_run(self, run_id: str, **values: Any) -> None:
        if "result" in values and values["result"] is not None:
            values["result"] = json.dumps(values["result"])
        cols = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*values.values(), run_id))

    def _run(self, row: sqlite3.Row) -> Run:
        return Run(
            id=row["id"], stage=row["stage"], plugin=row["plugin"],
            plugin_version=row["plugin_version"], options=json.loads(row["options"]),
            status=row["status"], created_at=row["created_at"], started_at=row["started_at"],
            ended_at=row["ended_at"], pid=row["pid"], exit_reason=row["exit_reason"],
            checkpoint=row["checkpoint"], result=json.loads(row["result"]) if row["result"] else None,
            attempts=row["attempts"], run_dir=Path(row["run_dir"]),
        )

    def get_run(self, ref: str) -> Run:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (ref,)).fetchone()
        if row is None:
            rows = self.db.execute("SELECT * FROM runs WHERE id LIKE ?", (ref + "%",)).fetchall()
            if len(rows) == 1:
                row = rows[0]
            elif len(rows) > 1:
                raise UserError(f"run '{ref}' is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        if row is None:
            raise UserError(f"no run '{ref}' in {self.path.parent}; see `workbench runs ls`")
        return self._run(row)

    def list_runs(self, limit: int = 50, stage: str | None = None, status: str | None = None) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", list[str]()
        if stage:
            sql, args = sql + " AND stage = ?", [*args, stage]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        sql += " ORDER BY created_at DESC LIMIT ?"
        return [self._run(r) for r in self.db.execute(sql, (*args, limit))]

    # artifacts ----------------------------------------------------------------------------

    def add_artifact(self, art: Artifact) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO artifacts (id, kind, name, path, run_id, created_at, size_bytes, metadata, metrics)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (art.id, art.kind, art.name, str(art.path), art.run_id, art.created_at,
                 art.size_bytes, json.dumps(art.metadata), json.dumps(art.metrics)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO artifact_parents VALUES (?, ?)", [(art.id, p) for p in art.parents]
            )

    def update_artifact(self, art_id: str, *, metadata: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> None:
        """Merge keys into an artifact's metadata or metrics (for example, eval results)."""
        with self.transaction() as db:
            row = db.execute("SELECT metadata, metrics FROM artifacts WHERE id = ?", (art_id,)).fetchone()
            if row is None:
                raise UserError(f"no artifact '{art_id}'")
            meta, mets = json.loads(row["metadata"]), json.loads(row["metrics"])
            meta.update(metadata or {})
            mets.update(metrics or {})
            db.execute(
                "UPDATE artifacts SET metadata = ?, metrics = ? WHERE id = ?",
                (json.dumps(meta), json.dumps(mets), art_id),
            )

    def _artifact(self, row: sqlite3.Row) -> Artifact:
        parents = [r[0] for r in self.db.execute(
            "SELECT parent_id FROM artifact_parents WHERE child_id = ? ORDER BY rowid", (row["id"],))]
        return Artifact(
            id=row["id"], kind=row["kind"], name=row["name"], path=Path(row["path"]),
            run_id=row["run_id"], created_at=row["created_at"], size_bytes=row["size_bytes"],
            metadata=json.loads(row["metadata"]), metrics=json.loads(row["metrics"]), parents=parents,
        )

    def find_artifact(self, ref: str, kinds: tuple[str, ...] | None = None) -> Artifact:
        """By id, then by name (newest wins), then by unique id prefix."""
        kind_sql = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else ""
        kind_args = list(kinds or ())
        for sql, arg in (
            ("SELECT * FROM artifacts WHERE id = ?", ref),
            ("SELECT * FROM artifacts WHERE name = ?", ref),
        ):
            row = self.db.execute(sql + kind_sql + " ORDER BY created_at DESC", (arg, *kind_args)).fetchone()
            if row is not None:
                return self._artifact(row)
        rows = self.db.execute(
            "SELECT * FROM artifacts WHERE id LIKE ?" + kind_sql, (ref + "%", *kind_args)
        ).fetchall()
        if len(rows) == 1:
            return self._artifact(rows[0])
        what = " or ".join(kinds) if kinds else "artifact"
        if len(rows) > 1:
            raise UserError(f"{what} '{ref}' is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        raise UserError(f"no {what} '{ref}' in the workspace; see `workbench models ls`")

    def list_artifacts(self, kind: str | None = None) -> list[Artifact]:
        if kind:
            rows = self.db.execute("SELECT * FROM artifacts WHERE kind = ? ORDER BY created_at", (kind,))
        else:
            rows = self.db.execute("SELECT * FROM artifacts ORDER BY created_at")
        return [self._artifact(r) for r in rows.fetchall()]

    def children(self, art_id: str) -> list[Artifact]:
        rows = self.db.execute(
            "SELECT a.* FROM artifacts a JOIN artifact_parents p ON p.child_id = a.id"
            " WHERE p.parent_id = ? ORDER BY a.created_at", (art_id,)
        ).fetchall()
        return [self._artifact(r) for r in rows]

    def lineage(self, art_id: str) -> list[tuple[int, Artifact, Run | None]]:
        """The artifact and its ancestors, depth first: (depth, artifact, run that made it)."""
        out: list[tuple[int, Artifact, Run | None]] = []
        seen: set[str] = set()

        def walk(aid: str, depth: int) -> None:
            if aid in seen:
                return
            seen.add(aid)
            try:
                art = self.find_artifact(aid)
            except UserError:
                return
            run = None
            if art.run_id:
                try:
                    run = self.get_run(art.run_id)
                except UserError:
                    run = None
            out.append((depth, art, run))
            for parent in art.parents:
                walk(parent, depth + 1)

        walk(art_id, 0)
        return out

    def remove_artifact(self, art_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM artifacts WHERE id = ?", (art_id,))

    # conversations ------------------------------------------------------------------------

    def add_conversation(self, title: str, model: str, system_prompt: str = "", settings: dict[str, Any] | None = None) -> str:
        cid = new_id("chat")
        now = time.time()
        self.db.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, title, model, system_prompt, json.dumps(settings or {}), now, now),
        )
        return cid

    def add_message(self, conversation_id: str, role: str, content: str, stats: dict[str, Any] | None = None) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at, stats) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, now, json.dumps(stats or {})),
            )
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))

    def list_conversations(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n"
            " FROM conversations c ORDER BY updated_at DESC"
        ).fetchall()
        return [dict(r) for r in rows]

    def get_conversation(self, ref: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (ref,)).fetchone()
        if row is None:
            rows = self.db.execute("SELECT * FROM conversations WHERE id LIKE ?", (ref + "%",)).fetchall()
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise UserError(f"no conversation '{ref}'; see `workbench chat --list`")
        conv = dict(row)
        conv["settings"] = json.loads(conv["settings"])
        conv["messages"] = [
            {**dict(m), "stats": json.loads(m["stats"])}
            for m in self.db.execute(
                "SELECT role, content, created_at, stats FROM messages WHERE conversation_id = ? ORDER BY id",
                (conv["id"],),
            )
        ]
        return conv

    def delete_conversation(self, conversation_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # arena votes --------------------------------------------------------------------------

    def add_vote(self, *, voter: str, model_left: str, model_right: str, prompt: str, answer_left: str,
                 answer_right: str, vote: str, seed: int, of_vote: str | None = None,
                 details: dict[str, Any] | None = None) -> str:
        """One side-by-side comparison and its verdict: left, right, tie or both_bad. `of_vote`
        links a judge's verdict to the human comparison it re-asked."""
        vid = new_id("vote")
        self.db.execute(
            "INSERT INTO arena_votes (id, created_at, voter, model_left, model_right, prompt, answer_left,"
            " answer_right, vote, seed, of_vote, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (vid, time.time(), voter, model_left, model_right, prompt, answer_left, answer_right, vote,
             seed, of_vote, json.dumps(details or {})),
        )
        return vid

    def list_votes(self, voter: str | None = None) -> list[dict[str, Any]]:
        """Votes oldest first, each a dict of its columns (details decoded)."""
        sql, args = "SELECT * FROM arena_votes", tuple[str, ...]()
        if voter:
            sql, args = sql + " WHERE voter = ?", (voter,)
        rows = self.db.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]
