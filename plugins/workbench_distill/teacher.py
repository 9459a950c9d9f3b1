"""Phase one: the teacher scores every training sequence once, and its top-k logits per token
are kept on disk, so the student trains with no teacher in memory.

The cache lives in the run directory (`teacher-topk/`): `values.npy` (float16 logits) and
`indices.npy` (int32 token ids), each of shape (sequences, seq_len, k), read back as memory maps,
and `state.json`, which says how many sequences are done. The state is written after the rows it
counts are flushed, so a cancelled or killed pass continues where it stopped and a finished one
is reused as it is. A cache made for other inputs (another teacher, dataset, length, k or set of
sequences) is never reused: its fingerprint differs and it is rebuilt.

Heavy module (torch): imported by the training loop only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.context import Context
from workbench.errors import Cancelled, UserError, writing
from workbench.hardware import fmt_bytes

CACHE_DIR = "teacher-topk"
#: float16's largest finite value: teacher logits are clamped to it before they are stored.
FP16_MAX = 65504.0


@dataclass
class TeacherCache:
    values: np.ndarray  # (sequences, seq_len, k) float16 logits
    indices: np.ndarray  # (sequences, seq_len, k) int32 token ids
    coverage: float  # mean probability mass of the top k under the teacher's full softmax
    perplexity: float | None  # the teacher's held-out perplexity
    seconds: float  # time the teacher pass took, over all attempts
    path: Path

    def rows(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (values, indices) for these sequences, as tensors."""
        return torch.from_numpy(self.values[rows]), torch.from_numpy(self.indices[rows])

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def choose_windows(n_tokens: int, seq_len: int, needed: int, seed: int) -> np.ndarray:
    """Start offsets of the training sequences: consecutive windows of `seq_len + 1` tokens,
    all of them, or a seeded random `needed` of them when the run uses fewer."""
    count = (n_tokens - 1) // seq_len
    if needed >= count:
        return np.arange(count, dtype=np.int64) * seq_len
    rng = np.random.default_rng([seed, 0xD157])
    return np.sort(rng.choice(count, size=needed, replace=False)).astype(np.int64) * seq_len


def sequences(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    """(len(starts), seq_len + 1) int64 windows of the token stream."""
    return torch.from_numpy(np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64))


def _allocate(path: Path) -> None:
    """Give the (sparse) file all its blocks now: a full disk is then an error here, rather than a
    SIGBUS later, while the pass writes through the memory map."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path / "state.json.tmp"
    with writing(tmp):
        tmp.write_text(json.dumps(state))
    os.replace(tmp, path / "state.json")


def teacher_topk(
    ctx: Context, load_teacher: Callable[[], Any], tokens: np.ndarray, starts: np.ndarray, *, seq_len: int,
    top_k: int, vocab_size: int, batch: int, fingerprint: dict[str, Any],
    perplexity: Callable[[Any], float | None],
) -> TeacherCache:
    """The teacher's top-k logits for every sequence in `starts`, computed or continued, and its
    held-out perplexity. `load_teacher()` gives the evaluation stage's TorchBackend holding the
    teacher; it is called only when something is left to compute, and closed before returning."""
    path = (ctx.run_dir if ctx.run_dir is not None else ctx.checkpoints_dir.parent) / CACHE_DIR
    shape = (len(starts), seq_len, top_k)
    state = _read_state(path)
    if state.get("fingerprint") != fingerprint:
        shutil.rmtree(path, ignore_errors=True)
        state = {"fingerprint": fingerprint, "done": 0, "coverage_sum": 0.0, "seconds": 0.0}
    done = int(state["done"])
    if done == len(starts) and "perplexity" in state:
        ctx.log(f"reusing the teacher's top-{top_k} logits of {len(starts)} sequences from {path}")
        return _open(path, state, len(starts) * seq_len)
    if done:
        ctx.log(f"continuing the teacher pass at sequence {done + 1} of {len(starts)}")
    if not done:
        need = int(np.prod(shape)) * (2 + 4)
        free = shutil.disk_usage(path.parent).free
        if need > free:
            raise UserError(
                f"the teacher's top-{top_k} logits need {fmt_bytes(need)} in {path.parent}, but only "
                f"{fmt_bytes(free)} is free; lower --top-k or --max-steps, or make room"
            )
    path.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name, dtype in (("values.npy", np.float16), ("indices.npy", np.int32)):
        with writing(path / name):
            arrays.append(np.lib.format.open_memmap(path / name, mode="r+" if done else "w+", dtype=dtype, shape=shape))
            if not done:
                _allocate(path / name)
    values, indices = arrays
    backend = load_teacher()
    model, device = backend.model, backend.device
    t0 = time.perf_counter()

    def save() -> None:
        values.flush()
        indices.flush()
        _write_state(path, {**state, "done": done, "seconds": state["seconds"] + time.perf_counter() - t0})

    with torch.inference_mode():
        while done < len(starts):
            if ctx.cancel_requested:
                save()
                raise Cancelled()
            rows = starts[done:done + batch]
            x = sequences(tokens, rows, seq_len)[:, :-1].to(device)
            # Padding rows beyond the vocabulary are no tokens: they are never a target.
            logits = model(x)[..., :vocab_size].float()
            top = logits.topk(top_k, dim=-1)
            state["coverage_sum"] += float((top.values.logsumexp(-1) - logits.logsumexp(-1)).exp().sum())
            values[done:done + len(rows)] = top.values.clamp(-FP16_MAX, FP16_MAX).half().cpu().numpy()
            indices[done:done + len(rows)] = top.indices.int().cpu().numpy()
            done += len(rows)
            save()
            ctx.progress(done, len(starts), unit="sequence", desc="teacher top-k logits")
    state["perplexity"] = perplexity(backend)
    save()
    backend.close()  # the teacher leaves memory; the cache is read back read-only
    return _open(path, _read_state(path), len(starts) * seq_len)


def _open(path: Path, state: dict[str, Any], tokens: int) -> TeacherCache:
    return TeacherCache(
        values=np.load(path / "values.npy", mmap_mode="r"), indices=np.load(path / "indices.npy", mmap_mode="r"),
        coverage=state["coverage_sum"] / max(1, tokens), perplexity=state["perplexity"],
        seconds=state["seconds"], path=path,
    )


def heldout_perplexity(backend: Any, model_dir: Path, ids: np.ndarray, context: int, tick: Callable[[int], None],
                       name: str) -> float | None:
    """Perplexity on the held-out token stream, by the evaluation stage's own code (sliding
    windows of `context` tokens, half a window of overlap). None when there is nothing held out."""
    from workbench_evaluate import tasks

    from workbench.ml.checkpoint import load_tokenizer
    from workbench.prompts import get_style

    if len(ids) < 2:
        return None
    subject = tasks.Subject(name, name, backend, load_tokenizer(model_dir), get_style("chatml"), set(), [])
    result = tasks.perplexity(subject, ids, 0, context, max(1, context // 2), tick, batch=backend.batch_size)
    ppl = float(result.metrics["perplexity"])
    if not math.isfinite(ppl):
        raise UserError(f"the held-out perplexity of {name} is {ppl}; the model's outputs are not finite")
    return ppl
