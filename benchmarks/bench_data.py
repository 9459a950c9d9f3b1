"""Data preparation: token-cache build speed and de-duplication scaling.

1. Tokenization throughput of the token-cache builder (`workbench_data.tokencache`) against a
   plain `tokenizers` loop over the same JSONL file in the same process: read the lines, parse
   them, `Tokenizer.encode_batch` in batches of 2048, append the end-of-text id after each
   document and collect the ids into one numpy array. Both produce the same array (checked);
   the best of `--reps` interleaved runs counts. Target: ours ≥ 0.9× the plain loop.
2. De-duplication (exact + MinHash near-duplicates, as `data prepare` runs them) on the demo
   pretraining corpus at 1×, 10× and 100× its size. The larger corpora are copies of the demo
   corpus with each copy's letters put through its own random substitution, so documents stay
   distinct across copies while lengths and the duplicate structure inside a copy stay the same.
   Growth must be linear: the ratio of the time at N× to N × the time at 1× should stay near 1.

    python benchmarks/bench_data.py [--scales 1,10,100] [--tok-copies 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

DEFAULTS = {"scales": "1,10,100", "tok_copies": 4, "reps": 3, "vocab": 4096}


def demo_corpus() -> list[str]:
    from workbench_data.demo import pretrain_records

    return [r.value for r in pretrain_records(seed=0, n_chars=2_500_000)]


def write_dataset(path: Path, texts: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "card.json").write_text(json.dumps({"type": "pretrain"}))
    with open(path / "train.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    return path


def train_tokenizer(out: Path, texts: list[str], vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from workbench_tokenizer.train import SPECIALS, write_configs

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    write_configs(out, tok)
    return out


def plain_loop(train_jsonl: Path, tok_dir: Path) -> Any:
    """What one would write by hand with `tokenizers`: the peer of the cache builder."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    with open(train_jsonl, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    ids: list[int] = []
    for i in range(0, len(texts), 2048):
        for enc in tok.encode_batch(texts[i : i + 2048], add_special_tokens=False):
            ids += enc.ids
            ids.append(eos)
    return np.array(ids, dtype=np.uint16)


def bench_tokenization(work: Path, corpus: list[str], copies: int, reps: int, vocab: int) -> list[dict[str, Any]]:
    import numpy as np
    from workbench_data.tokencache import token_array

    from workbench import locations

    texts = corpus * copies
    data = write_dataset(work / "tok-data", texts)
    tok_dir = train_tokenizer(work / "tok", corpus, vocab)
    mb = (data / "train.jsonl").stat().st_size / 1e6
    ours_s, peer_s = [], []
    n_tokens = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        ref = plain_loop(data / "train.jsonl", tok_dir)
        peer_s.append(time.perf_counter() - t0)
        shutil.rmtree(locations.cache_dir() / "tokens", ignore_errors=True)
        t0 = time.perf_counter()
        arr = token_array(data, tok_dir)
        ours_s.append(time.perf_counter() - t0)
        if not np.array_equal(np.asarray(arr), ref):
            raise AssertionError("the cache builder and the plain loop disagree")
        n_tokens = len(arr)
        del arr
    ours, peer = n_tokens / min(ours_s), n_tokens / min(peer_s)
    t0 = time.perf_counter()
    token_array(data, tok_dir)
    reuse_s = time.perf_counter() - t0
    return [
        {"figure": f"token cache build, tokens/s ({mb:.1f} MB JSONL, {n_tokens:,} tokens)",
         "ours": ours, "peer": peer, "ratio": ours / peer, "target": "≥ 0.9 (plain encode_batch loop)"},
        {"figure": "token cache reuse, seconds (same inputs again)", "ours": reuse_s, "peer": None,
         "ratio": None, "target": None},
    ]


def scaled(corpus: list[str], scale: int) -> list[str]:
    """`scale` copies; copy k > 0 has its letters substituted by a seeded random alphabet."""
    out = list(corpus)
    for k in range(1, scale):
        letters = list(string.ascii_lowercase)
        random.Random(k).shuffle(letters)
        table = str.maketrans(string.ascii_lowercase + string.ascii_uppercase,
                              "".join(letters) + "".join(letters).upper())
        out += [t.translate(table) for t in corpus]
    return out


def dedup(texts: list[str]) -> tuple[float, int, int]:
    """(seconds, exact duplicates, near duplicates) for exact + MinHash de-duplication."""
    from workbench_data.minhash import near_duplicates

    t0 = time.perf_counter()
    seen: set[bytes] = set()
    kept = []
    for t in texts:
        key = hashlib.blake2b(t.encode(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            kept.append(t)
    near = int(near_duplicates(kept, threshold=0.8).sum())
    return time.perf_counter() - t0, len(texts) - len(kept), near


def bench_dedup(corpus: list[str], scales: list[int]) -> list[dict[str, Any]]:
    rows = []
    base_s = None
    for scale in scales:
        texts = scaled(corpus, scale)
        mb = sum(len(t) for t in texts) / 1e6
        seconds, exact, near = dedup(texts)
        del texts
        if base_s is None:
            base_s = seconds / scale
        expected = base_s * scale
        rows.append({
            "figure": f"dedup {scale}× demo corpus ({mb:.0f} MB; -{exact} exact, -{near} near), s",
            "ours": seconds, "peer": expected if scale != scales[0] else None,
            "ratio": seconds / expected if scale != scales[0] else None,
            "target": "≤ 1.25 (linear growth)" if scale != scales[0] else None,
        })
    return rows


def rows(**overrides: Any) -> list[dict[str, Any]]:
    opts = {**DEFAULTS, **overrides}
    scales = [int(s) for s in str(opts["scales"]).split(",")]
    old_home = os.environ.get("WORKBENCH_HOME")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        os.environ["WORKBENCH_HOME"] = str(Path(tmp) / "home")
        try:
            corpus = demo_corpus()
            out = bench_tokenization(Path(tmp), corpus, opts["tok_copies"], opts["reps"], opts["vocab"])
            out += bench_dedup(corpus, scales)
        finally:
            if old_home is None:
                os.environ.pop("WORKBENCH_HOME", None)
            else:
                os.environ["WORKBENCH_HOME"] = old_home
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default=DEFAULTS["scales"], help="corpus multiples for de-duplication")
    parser.add_argument("--tok-copies", type=int, default=DEFAULTS["tok_copies"],
                        help="copies of the demo corpus in the tokenization file")
    parser.add_argument("--reps", type=int, default=DEFAULTS["reps"], help="interleaved repetitions")
    parser.add_argument("--vocab", type=int, default=DEFAULTS["vocab"], help="tokenizer vocabulary size")
    args = parser.parse_args()
    table = rows(scales=args.scales, tok_copies=args.tok_copies, reps=args.reps, vocab=args.vocab)
    print(f"{'figure':<74} {'ours':>12} {'peer':>12} {'ratio':>7}  target")
    for r in table:
        cells = [f"{v:,.3f}" if isinstance(v, float) else ("-" if v is None else str(v))
                 for v in (r["ours"], r["peer"], r["ratio"])]
        print(f"{r['figure']:<74} {cells[0]:>12} {cells[1]:>12} {cells[2]:>7}  {r['target'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
