"""What making a model smaller bought and what it cost: parameters, file size, held-out
perplexity and (on request) llama.cpp Q4_K_M decode speed, for a source model and its smaller
versions, as one result table.

Every stage that shrinks a model (prune, distill) reports through it, so their tables read alike:

    from workbench_evaluate.tradeoff import heldout_windows, measure, measure_speed, tradeoff_table
    windows = heldout_windows(dataset_dir, tokenizer_dir, seq_len=256, max_tokens=4096)
    rows = [measure("source", src_dir, windows), measure("pruned", out_dir, windows)]
    measure_speed([(rows[0], src_dir), (rows[1], out_dir)], windows.reshape(-1))  # optional: exports both
    result["tables"].append(tradeoff_table(rows, "Pruning"))

A stage that already has its figures (distill measures perplexity with the evaluation stage's
code while the teacher is loaded anyway) builds `Measured` rows itself.

Perplexity from `measure` is LitGPT's, in F32, on the same token windows for every model (so
models must share a tokenizer). Decode speed writes an F32 GGUF with the export stage's writer, quantizes it to
Q4_K_M with llama.cpp, and times single-token decoding of held-out tokens (teacher-forced, so
every model does the same work), the models in turns, best of a few rounds, all on the same
thread count.

Heavy module (torch, llama.cpp, and the export stage's GGUF writer): import it inside a stage's
`run()`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.hardware import fmt_bytes, free_cores, torch_threads
from workbench.weightfiles import model_weights

#: progress(desc, done, total) of a phase of work
Progress = Callable[[str, int, int], None]


@dataclass
class Measured:
    label: str
    params: int
    size_bytes: int  # the weights file the model loads from (model.safetensors, else lit_model.pth)
    ppl: float | None = None
    q4_size_bytes: int | None = None
    q4_tokens_per_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(config: Any) -> int:
    """Parameters of a LitGPT model of this config (tied weights once), built on the meta device."""
    from litgpt import GPT

    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


def footprint(model_dir: Path | None, gguf_path: Path | None = None) -> tuple[int, int]:
    """(parameters, file bytes) of a GGUF file, or else of a model directory, read from headers
    and configs without loading any weights."""
    if gguf_path is not None:
        from gguf import GGUFReader

        return sum(int(t.n_elements) for t in GGUFReader(gguf_path).tensors), gguf_path.stat().st_size
    assert model_dir is not None
    from workbench.ml.checkpoint import load_config

    return count_parameters(load_config(model_dir)), model_weights(model_dir).stat().st_size


def heldout_windows(dataset_dir: Path, tokenizer_dir: Path, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Consecutive windows of `seq_len + 1` tokens from the val split of a pretrain dataset,
    at most `max_tokens` predicted tokens in all (none when the split is empty)."""
    from workbench_data.tokencache import token_array
    from workbench_pretrain.data import validation_windows

    tokens = token_array(dataset_dir, tokenizer_dir, "val")
    return validation_windows(tokens, seq_len, max(1, max_tokens // seq_len))


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float | None:
    """exp(mean next-token loss) over every position of `windows`; None without windows."""
    if not len(windows):
        return None
    nll, count = 0.0, 0
    with torch_threads(free_cores()):
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            logits = model(batch[:, :-1]).double()
            nll += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
    return math.exp(nll / count)


def decode_speed(model_dirs: list[Path], tokens: list[int], *, threads: int, rounds: int = 3,
                 work_dir: Path | None = None, progress: Progress | None = None) -> list[tuple[int, float]]:
    """(Q4_K_M file size, decode tokens/s) of each model directory under llama.cpp.

    All files are made first, then timed in turns, round after round, keeping each model's best
    round: a neighbour's burst of load then slows every model alike instead of one of them.
    `progress(desc, done, total)` follows each phase.
    """
    from llama_cpp import Llama
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    def report(desc: str) -> Callable[[int, int], None]:
        def on_progress(done: int, total: int) -> None:
            if progress:
                progress(desc, done, total)
        return on_progress

    scratch = Path(tempfile.mkdtemp(prefix="tradeoff-", dir=work_dir))
    llms: list[Any] = []
    try:
        sizes = []
        for i, model_dir in enumerate(model_dirs):
            f32, q4 = scratch / f"{i}-f32.gguf", scratch / f"{i}-q4_k_m.gguf"
            write_gguf(model_dir, f32, "f32", report(f"writing GGUF {i + 1} of {len(model_dirs)}"))
            quantize(f32, q4, "q4_k_m", nthread=threads)
            f32.unlink()
            sizes.append(q4.stat().st_size)
            llms.append(Llama(model_path=str(q4), n_ctx=len(tokens) + 8, n_batch=64, n_gpu_layers=0,
                              n_threads=threads, n_threads_batch=threads, verbose=False))
        best = [math.inf] * len(llms)
        timing = report("timing llama.cpp decoding")
        for r in range(rounds):
            timing(r, rounds)
            for i, llm in enumerate(llms):
                llm.reset()
                llm.eval(tokens[:1])
                t0 = time.perf_counter()
                for tok in tokens[1:]:
                    llm.eval([tok])
                best[i] = min(best[i], time.perf_counter() - t0)
        timing(rounds, rounds)
        return [(size, (len(tokens) - 1) / t) for size, t in zip(sizes, best, strict=True)]
    finally:
        for llm in llms:
            llm.close()
        shutil.rmtree(scratch, ignore_errors=True)


def measure(label: str, model_dir: Path, windows: torch.Tensor, *,
            state_dict: dict[str, torch.Tensor] | None = None) -> Measured:
    """Parameters, weights file size and held-out perplexity of one model directory
    (`state_dict` overrides its weights)."""
    from workbench.ml.checkpoint import load_config, load_model

    if state_dict is None:
        model = load_model(model_dir, dtype=torch.float32)
    else:
        from litgpt import GPT

        model = GPT(load_config(model_dir)).eval()
        model.load_state_dict(state_dict)
    params = sum(p.numel() for p in model.parameters())
    ppl = perplexity(model, windows)
    return Measured(label, params, model_weights(model_dir).stat().st_size, ppl)


def measure_speed(models: list[tuple[Measured, Path]], tokens: Sequence[int] | torch.Tensor | np.ndarray, *,
                  decode_tokens: int = 128, threads: int | None = None, work_dir: Path | None = None,
                  progress: Progress | None = None) -> None:
    """Fill in the Q4_K_M size and decode speed of each (figures, model directory), decoding
    the first of the held-out `tokens` (at most the smallest context; made-up ids without any)."""
    from workbench.ml.checkpoint import load_config

    n = min(decode_tokens, *(load_config(d).block_size for _, d in models))
    ids = [int(t) for t in tokens[:n]] if len(tokens) >= 2 else list(range(n))
    results = decode_speed([d for _, d in models], ids, threads=threads or free_cores() or 1, work_dir=work_dir,
                           progress=progress)
    for (m, _), (size, rate) in zip(models, results, strict=True):
        m.q4_size_bytes, m.q4_tokens_per_s = size, rate


def _ratio(value: float | None, base: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    shown = format(value, fmt)
    if base and value != base:
        shown += f" ({value / base:.2f}×)"
    return shown


def tradeoff_table(models: list[Measured], title: str) -> dict[str, Any]:
    """A result table: one column per model, ratios against the first."""
    base = models[0]
    rows = [
        ["parameters", *[_ratio(m.params, base.params, ",d") for m in models]],
        ["weights file", *[fmt_bytes(m.size_bytes) for m in models]],
        ["held-out perplexity", *[_ratio(m.ppl, base.ppl, ".4g") for m in models]],
    ]
    if any(m.q4_tokens_per_s for m in models):
        rows.append(["Q4_K_M file", *[fmt_bytes(m.q4_size_bytes) if m.q4_size_bytes else "-" for m in models]])
        rows.append(["Q4_K_M decode tokens/s", *[_ratio(m.q4_tokens_per_s, base.q4_tokens_per_s, ".1f")
                                                 for m in models]])
    return {"title": title, "columns": ["", *[m.label for m in models]], "rows": rows}
