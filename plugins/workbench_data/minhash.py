"""Near-duplicate detection with MinHash and locality-sensitive hashing, in numpy.

Each document becomes a set of word 5-grams ("shingles"). Its MinHash signature holds, for
each of `num_perm` random hash functions, the smallest hash over its shingles; two signatures
agree in a position with probability equal to the documents' Jaccard similarity. LSH cuts the
signature into bands and puts documents whose band is identical into one bucket, so only
documents that share a bucket are compared. Everything is batched numpy: time grows linearly
with the corpus (plus a sort of one key per document and band).

A document is a near duplicate when its estimated Jaccard similarity to the first document of
one of its buckets is at least the threshold; the first of each bucket is kept, so the earliest
copy survives.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import pairwise

import numpy as np

_WORD = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)
#: Shingles per numpy block: (num_perm, block) uint64 is 32 MiB at 128 permutations.
_BLOCK = 32_768


def signatures(
    texts: Sequence[str],
    *,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures. A text without words gets all-ones."""
    rng = np.random.default_rng(seed)
    # Multiply-shift hashing: ((a * x + b) mod 2^64) >> 32 with odd a is a universal family.
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    out = np.full((len(texts), num_perm), 0xFFFFFFFF, dtype=np.uint32)
    word_ids: dict[str, int] = {}
    step = 2048
    for start in range(0, len(texts), step):
        batch = texts[start : start + step]
        hashes, doc_of = _shingles(batch, shingle, word_ids)
        _minhash_into(out, start, hashes, doc_of, a, b)
        if progress is not None:
            progress(min(start + step, len(texts)), len(texts))
    return out


def _shingles(texts: Sequence[str], k: int, word_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word k-gram, and the index (in `texts`) of the text it came from.

    A text shorter than k words gives one shingle of all its words.
    """
    flat: list[int] = []
    counts = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        counts[i] = len(words)
        for w in words:
            h = word_ids.get(w)
            if h is None:
                h = word_ids[w] = zlib.crc32(w.encode())
            flat.append(h)
    words_arr = np.asarray(flat, dtype=np.uint64)
    ends = np.cumsum(counts)
    starts = ends - counts
    n_sh = np.where(counts > 0, np.maximum(counts - k + 1, 1), 0)
    doc_of = np.repeat(np.arange(len(texts)), n_sh)
    first = np.repeat(starts, n_sh) + (np.arange(int(n_sh.sum())) - np.repeat(np.cumsum(n_sh) - n_sh, n_sh))
    last = np.repeat(ends - 1, n_sh)
    shingle = words_arr[first] if first.size else np.zeros(0, dtype=np.uint64)
    for j in range(1, k):
        nxt = words_arr[np.minimum(first + j, last)] if first.size else shingle
        shingle = ((shingle * np.uint64(0x01000193)) ^ nxt) & _MASK32
    return _fmix32(shingle), doc_of


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser: spreads the k-gram mix over all 32 bits."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    return h ^ (h >> np.uint64(16))


def _minhash_into(out: np.ndarray, offset: int, hashes: np.ndarray, doc_of: np.ndarray,
                  a: np.ndarray, b: np.ndarray) -> None:
    """Write each text's minimum over its shingles into out[offset + doc], block by block."""
    if hashes.size == 0:
        return
    # Cut blocks only where a new document starts, so reduceat never spans two blocks.
    doc_starts = np.flatnonzero(np.r_[True, doc_of[1:] != doc_of[:-1]])
    cuts = [0]
    for s in doc_starts[1:]:
        if s - cuts[-1] >= _BLOCK:
            cuts.append(int(s))
    cuts.append(hashes.size)
    for lo, hi in pairwise(cuts):
        # (num_perm, shingles): reduceat along the contiguous axis is several times faster.
        block = (a[:, None] * hashes[None, lo:hi] + b[:, None]) >> np.uint64(32)
        local = doc_starts[(doc_starts >= lo) & (doc_starts < hi)] - lo
        mins = np.minimum.reduceat(block, local, axis=1)
        out[offset + doc_of[lo + local]] = mins.T.astype(np.uint32)


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising the weighted area of false positives below and false negatives
    above the threshold, as in datasketch's MinHashLSH. Candidates are verified afterwards, so a
    false positive costs only a comparison: misses weigh four times as much."""
    s = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            err = float(0.2 * fp + 0.8 * fn)
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def near_duplicates(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Boolean mask: True where a text nearly duplicates an earlier one (keep the False ones)."""
    sig = signatures(texts, num_perm=num_perm, shingle=shingle, seed=seed, progress=progress)
    return duplicates_from_signatures(sig, threshold)


def duplicates_from_signatures(sig: np.ndarray, threshold: float) -> np.ndarray:
    n, num_perm = sig.shape
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    bands, rows = lsh_params(round(threshold, 3), num_perm)
    has_words = ~(sig == 0xFFFFFFFF).all(axis=1)
    pairs: list[np.ndarray] = []
    for band in range(bands):
        cols = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        for c in range(rows):  # a 64-bit FNV-style mix of the band's values
            key = (key ^ cols[:, c]) * np.uint64(0x100000001B3)
        order = np.argsort(key, kind="stable")  # stable: the first of a bucket is the earliest
        sorted_key = key[order]
        new_group = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
        first = order[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]
        member = order
        keep = (first != member) & has_words[member]
        pairs.append(np.stack([first[keep], member[keep]], axis=1))
    cand = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)
    for lo in range(0, len(cand), 65_536):  # verify candidates by their estimated Jaccard
        chunk = cand[lo : lo + 65_536]
        similar = (sig[chunk[:, 0]] == sig[chunk[:, 1]]).mean(axis=1) >= threshold
        dup[chunk[similar, 1]] = True
    return dup


def jaccard(a: str, b: str, shingle: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word k-gram sets (for tests and reports)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(text.lower())
        if len(words) < shingle:
            return {tuple(words)} if words else set()
        return {tuple(words[i : i + shingle]) for i in range(len(words) - shingle + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga | gb else 1.0
