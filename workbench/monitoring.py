"""What `workbench serve` answered: the request log, its figures, and input drift.

The log is its own SQLite database in the workspace (`monitor.db`, WAL mode), not a table of the
workspace index: a busy server's writes never wait on a training run's, trimming old rows never
touches the index, and deleting the file only forgets the log. One writer thread per server
inserts batches (see `workbench_chat.monitor`); any number of readers (`workbench monitor`, the
TUI's Monitor view) read concurrently. The size is bounded: each row carries its payload size,
triggers keep the sum in `totals`, and the writer drops the oldest rows past the cap.

Drift compares recent requests with the training data of the served model, found through the
lineage (the dataset artifacts nearest to the model). Both sides are reduced the same way:
lower-cased words (runs of letters and digits; each punctuation mark counts as one) → the
length in words, and unigram + bigram counts hashed into `BUCKETS` buckets. Only those
reductions are kept when prompts are not logged; see docs/chat.md for what they reveal.

Light on purpose (sqlite3, re, zlib): the TUI imports it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError

#: Default cap on the log's payload; the oldest requests are dropped past it.
DEFAULT_MAX_MB = 64.0
#: Hashed n-gram buckets. Few enough that each bucket is shared by many n-grams (a bucket's
#: count does not name the word), many enough that the common n-grams of a corpus stand apart.
BUCKETS = 4096
#: Words of one input that are profiled (bounds the writer's work and the row's size).
MAX_WORDS = 4096
#: Logged prompt text is cut to this many characters.
MAX_PROMPT_CHARS = 32_768
#: Drift needs this many recent requests with a profile before it is judged.
MIN_DRIFT_SAMPLES = 10
#: Recent requests compared with the training data.
DRIFT_WINDOW = 200
#: Training rows profiled per dataset.
MAX_REFERENCE_ROWS = 20_000
#: N-grams one input weighs at most in a pooled distribution: a longer input is scaled down, so
#: one long prompt cannot outweigh a few dozen short ones.
MAX_GRAMS_WEIGHT = 64
#: Minutes of the request-rate timeline.
TIMELINE_MINUTES = 30
#: PSI bins of the n-gram distribution: the reference's most frequent buckets, plus the rest.
NGRAM_BINS = 16
LENGTH_BINS = 5
#: Population stability index levels, as the credit-scoring convention reads them.
PSI_MODERATE, PSI_LARGE = 0.1, 0.25

WORD = re.compile(r"\w+|[^\w\s]")

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, model_ref TEXT NOT NULL, url TEXT NOT NULL,
    pid INTEGER NOT NULL, started_at REAL NOT NULL, stopped_at REAL, log_prompts INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, server TEXT NOT NULL, t REAL NOT NULL,
    model TEXT NOT NULL, model_ref TEXT NOT NULL, method TEXT NOT NULL, endpoint TEXT NOT NULL,
    status INTEGER, error TEXT, stream INTEGER NOT NULL DEFAULT 0, latency_s REAL,
    ttft_s REAL, tokens_in INTEGER, tokens_out INTEGER, finish TEXT, cached INTEGER NOT NULL DEFAULT 0,
    words INTEGER, ngrams TEXT, prompt TEXT, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_t ON requests(t);
CREATE INDEX IF NOT EXISTS requests_model_t ON requests(model_ref, t);
CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS requests_added AFTER INSERT ON requests
    BEGIN UPDATE totals SET v = v + NEW.size WHERE k = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS requests_dropped AFTER DELETE ON requests
    BEGIN UPDATE totals SET v = v - OLD.size WHERE k = 'bytes'; END;
"""

COLUMNS = ("server", "t", "model", "model_ref", "method", "endpoint", "status", "error", "stream",
           "latency_s", "ttft_s", "tokens_in", "tokens_out", "finish", "cached", "words", "ngrams",
           "prompt", "size")


def db_path() -> Path:
    return locations.home() / "monitor.db"


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A writer's connection: creates the log if needed."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # Commits reach the OS at once (another process can read them, a killed server loses nothing)
    # without an fsync each; a power cut may lose the last ones, but never corrupts the log.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(SCHEMA)
    return db


def open_log(path: Path | None = None) -> sqlite3.Connection | None:
    """A reader's connection, or None when nothing was ever recorded (reading creates nothing)."""
    path = path or db_path()
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=30000")
    return db


# features ---------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())[:MAX_WORDS]


def ngram_counts(ws: list[str]) -> Counter[int]:
    """Unigram and bigram counts, hashed into BUCKETS buckets (crc32: the same in every process)."""
    grams = [*ws, *(f"{a} {b}" for a, b in itertools.pairwise(ws))]
    return Counter(zlib.crc32(g.encode("utf-8")) % BUCKETS for g in grams)


def profile_text(text: str) -> tuple[int, str]:
    """(length in words, hashed n-gram counts as compact JSON) of one input."""
    ws = words(text)
    counts = ngram_counts(ws)
    return len(ws), json.dumps(sorted(counts.items()), separators=(",", ":"))


def row_size(values: dict[str, Any]) -> int:
    """A row's payload in bytes, as counted against the cap (its text plus a fixed overhead)."""
    text = sum(len(str(v).encode("utf-8")) for v in values.values() if isinstance(v, str))
    return 96 + text


# reading ---------------------------------------------------------------------------------------


def parse_since(value: str, now: float | None = None) -> float:
    """`--since`: 30s, 15m, 2h, 7d, or an ISO date/time (local time); the Unix time it names."""
    now = time.time() if now is None else now
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if found:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return now - float(found.group(1)) * unit
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise UserError(f"--since {value!r}: give a duration such as 30s, 15m, 2h, 7d, "
                        "or a date such as 2026-01-31T09:00") from None


def recent_profiles(db: sqlite3.Connection, model_ref: str, since: float) -> list[tuple[int, str]]:
    """(length, hashed n-grams) of a model's last DRIFT_WINDOW requests with text, oldest first."""
    rows = db.execute("SELECT words, ngrams FROM requests WHERE model_ref = ? AND t >= ? AND words IS NOT NULL"
                      " ORDER BY id DESC LIMIT ?", (model_ref, since, DRIFT_WINDOW)).fetchall()
    return [(r[0], r[1]) for r in reversed(rows)]


def servers(db: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in db.execute("SELECT * FROM servers ORDER BY started_at")]


def payload_bytes(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT v FROM totals WHERE k = 'bytes'").fetchone()
    return int(row[0]) if row else 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


#: Counts and sums per served model, in one pass over the window (SQLite does the work: a
#: day of a busy server's log is tens of thousands of rows, and the TUI asks every two seconds).
GROUP_SQL = """
SELECT model_ref, COUNT(*) AS requests, TOTAL(t >= :minute) AS per_min,
    TOTAL(tokens_out IS NOT NULL) AS generations, TOTAL(stream AND tokens_out IS NOT NULL) AS streamed,
    TOTAL(error IS NOT NULL OR status >= 400) AS errors,
    TOTAL(CASE WHEN tokens_out IS NOT NULL THEN tokens_in END) AS tokens_in, TOTAL(tokens_out) AS tokens_out,
    TOTAL(CASE WHEN tokens_out IS NOT NULL THEN latency_s END) AS busy,
    TOTAL(latency_s IS NOT NULL) AS n_latency, TOTAL(tokens_out IS NOT NULL AND ttft_s IS NOT NULL) AS n_ttft,
    MIN(t) AS first_t, MAX(t) AS last_t, MAX(id) AS last_id
FROM requests WHERE t >= :since AND {only} GROUP BY model_ref ORDER BY last_t DESC
"""


def model_figures(db: sqlite3.Connection, since: float, now: float, only: str = "1",
                  args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rate, latency, time to first token, errors and tokens/s of each model's requests since
    `since`; `only` is an SQL condition on the rows (with its `args`)."""
    args = {**(args or {}), "since": since, "minute": now - 60}
    out = []
    for g in db.execute(GROUP_SQL.format(only=only), args).fetchall():
        ref = g["model_ref"]
        mine = {"ref": ref, "since": since}
        kinds = db.execute("SELECT status, error, COUNT(*) FROM requests WHERE model_ref = :ref AND t >= :since"
                           " AND (error IS NOT NULL OR status >= 400) GROUP BY status, error ORDER BY COUNT(*) DESC",
                           mine).fetchall()
        latency = {q: _nearest_rank(db, "latency_s", mine, g["n_latency"], q) for q in (50, 95)}
        ttft = {q: _nearest_rank(db, "ttft_s", mine, g["n_ttft"], q, generations=True) for q in (50, 95)}
        requests, errors = g["requests"], int(g["errors"])
        out.append({
            "model": db.execute("SELECT model FROM requests WHERE id = ?", (g["last_id"],)).fetchone()[0],
            "model_ref": ref,
            "requests": requests,
            "per_min": int(g["per_min"]),
            "generations": int(g["generations"]),
            "streamed": int(g["streamed"]),
            "errors": errors,
            "error_rate": errors / requests,
            "error_kinds": {f"{status or '-'} {error or ''}".strip(): n for status, error, n in kinds},
            "latency_p50_s": latency[50],
            "latency_p95_s": latency[95],
            "ttft_p50_s": ttft[50],
            "ttft_p95_s": ttft[95],
            "tokens_in": int(g["tokens_in"]),
            "tokens_out": int(g["tokens_out"]),
            "tokens_per_s": g["tokens_out"] / g["busy"] if g["busy"] > 0 else None,
            "first_t": g["first_t"],
            "last_t": g["last_t"],
        })
    return out


def _nearest_rank(db: sqlite3.Connection, column: str, mine: dict[str, Any], n: float, q: float, *,
                  generations: bool = False) -> float | None:
    """The nearest-rank q-th percentile of a column over one model's `n` non-null values."""
    if not n:
        return None
    only = " AND tokens_out IS NOT NULL" if generations else ""
    row = db.execute(f"SELECT {column} FROM requests WHERE model_ref = :ref AND t >= :since{only}"
                     f" AND {column} IS NOT NULL ORDER BY {column} LIMIT 1 OFFSET :k",
                     {**mine, "k": max(0, math.ceil(q / 100 * n) - 1)}).fetchone()
    return row[0] if row else None


def timeline(db: sqlite3.Connection, now: float, only: str = "1", args: dict[str, Any] | None = None) -> list[int]:
    """Requests in each of the last TIMELINE_MINUTES minutes, oldest first."""
    counts = [0] * TIMELINE_MINUTES
    rows = db.execute(f"SELECT CAST((:now - t) / 60 AS INTEGER) AS back, COUNT(*) FROM requests "
                      f"WHERE t > :start AND {only} GROUP BY back",
                      {**(args or {}), "now": now, "start": now - 60 * TIMELINE_MINUTES})
    for back, n in rows:
        if 0 <= back < TIMELINE_MINUTES:
            counts[TIMELINE_MINUTES - 1 - back] += n
    return counts


# drift -----------------------------------------------------------------------------------------


@dataclass
class Profile:
    """Lengths and pooled hashed n-gram counts of a set of inputs (each weighing at most
    MAX_GRAMS_WEIGHT n-grams)."""

    lengths: list[int] = field(default_factory=list)
    ngrams: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, length: int, counts: Iterable[tuple[int, int]]) -> None:
        self.lengths.append(length)
        counts = list(counts)
        total = sum(n for _, n in counts)
        weight = min(1.0, MAX_GRAMS_WEIGHT / total) if total else 0.0
        for bucket, n in counts:
            self.ngrams[bucket] += n * weight

    def merge(self, other: Profile) -> None:
        self.lengths += other.lengths
        for bucket, n in other.ngrams.items():
            self.ngrams[bucket] += n


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two count vectors over the same bins (half a count added
    to every bin, so an empty bin weighs as a rare one instead of an infinite one)."""
    e_total, a_total = sum(expected) + 0.5 * len(expected), sum(actual) + 0.5 * len(actual)
    out = 0.0
    for e, a in zip(expected, actual, strict=True):
        p, q = (e + 0.5) / e_total, (a + 0.5) / a_total
        out += (q - p) * math.log(q / p)
    return out


def chance_psi(bins: int, n_expected: float, n_actual: float) -> float:
    """The PSI two samples of one distribution show by chance alone: about (bins - 1)(1/n + 1/m),
    as PSI is the symmetric KL divergence and each side's half of it is about chi²/(2n)."""
    return (bins - 1) * (1 / max(n_expected, 1) + 1 / max(n_actual, 1))


def level(value: float, chance: float) -> str:
    """How far a PSI is past what chance gives, read on the usual scale."""
    excess = value - chance
    return "large shift" if excess >= PSI_LARGE else "moderate shift" if excess >= PSI_MODERATE else "stable"


def length_psi(reference: list[int], recent: list[int]) -> tuple[float, float]:
    """PSI over the reference's length quantiles (equal-mass bins), with a bin each for inputs
    shorter or longer than any in the reference."""
    ordered = sorted(reference)
    quantiles = {ordered[min(len(ordered) - 1, len(ordered) * i // LENGTH_BINS)] for i in range(1, LENGTH_BINS)}
    edges = sorted({ordered[0], *quantiles, ordered[-1] + 1})

    def binned(values: list[int]) -> list[float]:
        counts = [0.0] * (len(edges) + 1)
        for v in values:
            counts[sum(1 for e in edges if v >= e)] += 1
        return counts

    return psi(binned(reference), binned(recent)), chance_psi(len(edges) + 1, len(reference), len(recent))


def ngram_psi(reference: Mapping[int, float], recent: Mapping[int, float]) -> tuple[float, float]:
    """PSI over the reference's NGRAM_BINS most frequent buckets plus one bin for all others."""
    top = sorted(reference, key=lambda b: -reference[b])[:NGRAM_BINS]

    def binned(counts: Mapping[int, float]) -> list[float]:
        inside = [float(counts.get(b, 0)) for b in top]
        return [*inside, float(sum(counts.values())) - sum(inside)]

    expected, actual = binned(reference), binned(recent)
    return psi(expected, actual), chance_psi(len(top) + 1, sum(expected), sum(actual))


def row_input(row: dict[str, Any]) -> str | None:
    """The text a request to the model would carry for a normalised dataset row: the messages
    before the model's last turn, or the row's text."""
    messages = row.get("messages")
    if isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
        if turns and turns[-1].get("role") == "assistant":
            turns = turns[:-1]
        return "\n".join(m["content"] for m in turns) or None
    text = row.get("text")
    return text if isinstance(text, str) else None


_reference_cache: dict[tuple[str, int, int], Profile] = {}


def dataset_profile(train: Path) -> Profile:
    """The profile of a dataset's train.jsonl, kept while the file is unchanged."""
    st = train.stat()
    key = (str(train), st.st_mtime_ns, st.st_size)
    if key not in _reference_cache:
        from workbench.datasets import iter_jsonl

        prof = Profile()
        for n, (_, row) in enumerate(iter_jsonl(train)):
            if n >= MAX_REFERENCE_ROWS:
                break
            text = row_input(row) if isinstance(row, dict) else None
            if text:
                ws = words(text)
                prof.add(len(ws), ngram_counts(ws).items())
        _reference_cache.clear()  # one model's data at a time is all a view needs
        _reference_cache[key] = prof
    return _reference_cache[key]


def find_artifact(store: Any, model_ref: str) -> Any | None:
    """The gguf/model artifact a server was started with: by id, or by the path it served."""
    try:
        return store.find_artifact(model_ref, kinds=("gguf", "model"))
    except UserError:
        pass
    path = Path(model_ref)
    for art in store.list_artifacts():
        if art.kind in ("gguf", "model") and art.path in (path, path.parent):
            return art
    return None


def reference_datasets(model_ref: str) -> tuple[list[Any], str]:
    """The dataset artifacts the served model was trained on: the nearest ones in its lineage
    (a finetuned model's data, not its base model's pretraining data), or ([], why none)."""
    from workbench.store import Store

    if not locations.db_path().exists():
        return [], "the workspace has no artifacts"
    store = Store()
    try:
        art = find_artifact(store, model_ref)
        if art is None:
            return [], "the served model is not a workspace artifact, so its training data is unknown"
        # Breadth first: a parent reached by two paths counts at the shorter one.
        seen, frontier = {art.id, *art.parents}, list(dict.fromkeys(art.parents))
        while frontier:
            found, following = [], []
            for parent_id in frontier:
                try:
                    parent = store.find_artifact(parent_id)
                except UserError:  # removed since
                    continue
                if parent.kind == "dataset":
                    found.append(parent)
                following += [p for p in parent.parents if p not in seen]
                seen.update(parent.parents)
            if found:
                return found, ""
            frontier = following
    finally:
        store.close()
    return [], f"no dataset in the lineage of {art.id}"


def drift(model_ref: str, samples: list[tuple[int, str]]) -> dict[str, Any]:
    """Recent requests of one model (from `recent_profiles`) against its training data."""
    recent = Profile()
    for length, ngrams in samples:
        recent.add(length, json.loads(ngrams))
    out: dict[str, Any] = {"samples": len(recent.lengths), "reference": None, "reason": ""}
    datasets, why = reference_datasets(model_ref)
    reference = Profile()
    sources = []
    for art in datasets:
        train = art.path / "train.jsonl"
        if not train.exists():
            continue
        prof = dataset_profile(train)
        reference.merge(prof)
        sources.append({"id": art.id, "name": art.name, "rows": len(prof.lengths)})
    if not reference.lengths:
        out["reason"] = f"no reference data: {why or 'its datasets hold no text rows'}"
        return out
    out["reference"] = {"datasets": sources, "length_p50": percentile(reference.lengths, 50),
                        "length_p95": percentile(reference.lengths, 95)}
    if recent.lengths:
        out["recent"] = {"length_p50": percentile(recent.lengths, 50), "length_p95": percentile(recent.lengths, 95)}
    if len(recent.lengths) < MIN_DRIFT_SAMPLES:
        out["reason"] = f"needs {MIN_DRIFT_SAMPLES} requests with text, has {len(recent.lengths)}"
        return out
    for name, (value, chance) in (("length", length_psi(reference.lengths, recent.lengths)),
                                  ("ngram", ngram_psi(reference.ngrams, recent.ngrams))):
        out[f"{name}_psi"], out[f"{name}_chance"], out[f"{name}_level"] = value, chance, level(value, chance)
    return out


# the report both faces show ----------------------------------------------------------------------


def report(model: str | None = None, since: float | None = None, now: float | None = None,
           path: Path | None = None) -> dict[str, Any]:
    """Per served model: its figures over the window and its drift; the servers and the log's size."""
    now = time.time() if now is None else now
    since = now - 3600 if since is None else since
    path = path or db_path()
    db = open_log(path)
    if db is None:
        return {"since": since, "models": [], "servers": [], "bytes": 0, "recorded": False,
                "per_minute": [0] * TIMELINE_MINUTES}
    only, args = "1", {}
    if model is not None:
        refs = sorted({model, *(_artifact_id(model) or ())})
        args = {f"r{i}": ref for i, ref in enumerate(refs)}
        names = ", ".join(f":{k}" for k in args)
        only = f"(model IN ({names}) OR model_ref IN ({names}))"
    try:
        models = model_figures(db, since, now, only, args)
        samples = {m["model_ref"]: recent_profiles(db, m["model_ref"], since) for m in models}
        per_minute = timeline(db, now, only, args)
        known = servers(db)
        size = payload_bytes(db)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"the request log {path} cannot be read ({exc}); move it away and "
                        "`workbench serve` starts a new one") from None
    finally:
        db.close()
    if model is not None:
        known = [s for s in known if s["model"] in refs or s["model_ref"] in refs]
    for m in models:
        m["drift"] = drift(m["model_ref"], samples[m["model_ref"]])
    live = [s for s in known if s["stopped_at"] is None]
    return {"since": since, "models": models, "servers": live, "bytes": size, "recorded": True,
            "per_minute": per_minute}


def _artifact_id(ref: str) -> tuple[str, ...] | None:
    """The artifact ids a MODEL argument names (by name or id prefix), if it names one."""
    if not locations.db_path().exists():
        return None
    from workbench.store import Store

    store = Store()
    try:
        art = store.find_artifact(ref, kinds=("gguf", "model"))
        return (art.id, str(art.path))
    except UserError:
        return None
    finally:
        store.close()


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def lines(rep: dict[str, Any]) -> list[str]:
    """The report as the lines `workbench monitor` prints and the TUI shows."""
    if not rep["recorded"]:
        return ["no requests recorded yet: `workbench serve MODEL` records every request it answers"]
    out = [f"serving {s['model']} at {s['url']} (pid {s['pid']}, since "
           f"{time.strftime('%H:%M:%S', time.localtime(s['started_at']))})" for s in rep["servers"]]
    if not rep["servers"]:
        out.append("no server is running")
    if not rep["models"]:
        out.append(f"no requests since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rep['since']))}")
    for m in rep["models"]:
        out += ["", f"{m['model']} ({m['model_ref']})"]
        out += [f"  {k:<16} {v}" for k, v in figure_rows(m)]
        out += [f"  {k:<16} {v}" for k, v in drift_rows(m["drift"])]
    out += ["", f"log size {rep['bytes'] / 2**20:.2f} MiB"]
    return out


def figure_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    rate = m["error_rate"]
    kinds = ", ".join(f"{k} ×{n}" for k, n in list(m["error_kinds"].items())[:3])
    tps = m["tokens_per_s"]
    return [
        ("requests", f"{m['requests']} ({m['generations']} generations, {m['streamed']} streamed); "
                     f"{m['per_min']} in the last minute"),
        ("latency", f"p50 {fmt_ms(m['latency_p50_s'])} · p95 {fmt_ms(m['latency_p95_s'])}"),
        ("first token", f"p50 {fmt_ms(m['ttft_p50_s'])} · p95 {fmt_ms(m['ttft_p95_s'])}"),
        ("errors", "-" if rate is None else f"{rate:.1%} ({m['errors']})" + (f": {kinds}" if kinds else "")),
        ("tokens", f"{m['tokens_in']:,} in · {m['tokens_out']:,} out · "
                   + ("-" if tps is None else f"{tps:,.1f} tokens/s")),
    ]


def drift_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    if d["reference"] is None:
        return [("drift", d["reason"])]
    names = ", ".join(f"{s['name']} ({s['rows']:,} rows)" for s in d["reference"]["datasets"])
    ref = d["reference"]
    recent = d.get("recent")
    length = f"training p50 {ref['length_p50']} · p95 {ref['length_p95']}"
    if recent:
        length += f"; recent p50 {recent['length_p50']} · p95 {recent['length_p95']}"
    out = [("drift against", names), ("length (words)", length)]
    if "ngram_psi" in d:
        out += [(f"{label} PSI", f"{d[f'{key}_psi']:.3f} {d[f'{key}_level']} (chance alone gives "
                                 f"about {d[f'{key}_chance']:.3f})")
                for label, key in (("length", "length"), ("n-gram", "ngram"))]
        out.append(("compared", f"the last {d['samples']} requests with text"))
    else:
        out.append(("drift", d["reason"]))
    return out
