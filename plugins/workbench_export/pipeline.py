"""The export run: merge if needed, write, quantize, verify, register, copy.

Order of work: an F32 GGUF is written first into a scratch staging directory and verified
against LitGPT to the tight F32 standard; that proves the conversion (tensor layout, rotary
permutation, metadata, tokenizer). F16/BF16 files are written natively, quantized files are made
from the F32 one by llama.cpp, and each is verified on its own. Only files that pass are
registered; the scratch directory is removed whatever happens.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.errors import Cancelled, UserError
from workbench.families import by_name
from workbench.hardware import fmt_bytes
from workbench.prompts import style_for_model
from workbench_export.families import family_for, read_config, shape_of
from workbench_export.gguf_writer import write_gguf
from workbench_export.quantize import quantize
from workbench_export.stage import BASE_TYPES, Options, base_model_of
from workbench_export.templates import modelfile
from workbench_export.verify import Reference, Verification, verify_gguf

HELDOUT = Path(__file__).with_name("heldout.txt")
_REF_STEPS = 40  # progress steps given to the LitGPT reference pass


class VerificationFailed(Exception):
    """At least one file did not match the LitGPT model; those files were not registered."""


@dataclass
class _Progress:
    """One progress bar over all phases: tensors written, reference steps, files verified."""

    ctx: Context
    total: int
    done: int = 0
    desc: str = ""

    def phase(self, desc: str) -> None:
        self.desc = desc
        self.ctx.log(desc)

    def step(self, n: int = 1) -> None:
        if self.ctx.cancel_requested:
            raise Cancelled()
        self.done += n
        self.ctx.progress(min(self.done, self.total), self.total, unit="step", desc=self.desc)

    def callback(self) -> Callable[[int, int], None]:
        """For a sub-task reporting (done, total) in its own units, one unit per step."""
        last = [0]

        def on_progress(done: int, total: int) -> None:
            self.step(done - last[0])
            last[0] = done

        return on_progress

    def scaled(self, steps: int) -> Callable[[int, int], None]:
        """For a sub-task whose (done, total) is mapped onto `steps` steps."""
        last = [0]

        def on_progress(done: int, total: int) -> None:
            now = round(steps * done / total)
            self.step(now - last[0])
            last[0] = now

        return on_progress


@dataclass
class _Source:
    model_dir: Path
    name: str
    parents: list[str]
    state_dict: Any = None
    notes: dict[str, Any] = field(default_factory=dict)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _source(options: Options, ctx: Context) -> _Source:
    """The model directory to export; a LoRA adapter is merged into its base in memory."""
    art = ctx.artifact(options.model, ("model", "adapter"))
    name = options.name or art.name
    if art.kind == "model":
        return _Source(art.path, name, [art.id])
    from workbench.ml.lora import load_adapter, load_lora_model, merged_state_dict, read_adapter

    base = base_model_of(art.path, ctx)
    settings, adapter, _cfg = read_adapter(art.path)
    ctx.log(f"merging LoRA adapter {art.id} (r={settings.r}) into {base.id} for export")
    model = load_lora_model(base.path, settings)
    load_adapter(model, adapter)
    merged = merged_state_dict(model)
    del model
    return _Source(base.path, name, [art.id, base.id], merged, {"merged_adapter": art.id, "base_model": base.id})


def _rows_to_text(path: Path, style: Any) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON; re-run `workbench data prepare`") from None
            if "text" in row:
                texts.append(str(row["text"]))
                continue
            messages = list(row.get("messages") or [])
            if "chosen" in row:
                messages.append({"role": "assistant", "content": row["chosen"]})
            if messages and style is not None:
                texts.append(style.render(messages, add_generation_prompt=False))
            elif messages:
                texts.append("\n".join(m.get("content", "") for m in messages))
    return texts


def _heldout(options: Options, ctx: Context, model_id: str, style: Any) -> tuple[str, str]:
    """(text, where it came from): --eval-data, else the dataset in the model's lineage, else built in."""
    dataset = None
    if options.eval_data:
        dataset = ctx.artifact(options.eval_data, ("dataset",))
    else:
        for _depth, art, _run in ctx.store.lineage(model_id):
            if art.kind == "dataset":
                dataset = art
                break
    if dataset is not None:
        val = dataset.path / "val.jsonl"
        texts = _rows_to_text(val, style) if val.exists() else []
        if texts:
            # Enough characters for the token budget, without reading a huge split entirely.
            text = ""
            for t in texts:
                text += t + "\n\n"
                if len(text) > options.ppl_tokens * 8:
                    break
            return text, f"{dataset.name} ({dataset.id}) val split"
        if options.eval_data:
            raise UserError(f"{val} holds no rows; prepare the dataset with a validation split")
    return HELDOUT.read_text(encoding="utf-8"), "built-in sample text"


def _n_tensors(model_dir: Path) -> int:
    config = read_config(model_dir)
    family = family_for(config)
    shape = shape_of(config, family)
    per_block = (6 if family.qkv_bias else 3) + len(family.layer_tensors) + len(family.fused_tensors)
    return 3 + per_block * shape.n_layer + (1 if shape.rope_adjustments else 0)


def _copy_out(files: list[tuple[Path, str]], out_dir: Path) -> list[str]:
    """Copy through a temporary name, so a half-copied file never carries the final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for src, name in files:
        dst = out_dir / name
        tmp = out_dir / f".{name}.partial"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        copied.append(str(dst))
    return copied


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return f"{v:.4g}" if v is not None and math.isfinite(v) else "-"


@dataclass
class _Run:
    """What every file of one export shares."""

    options: Options
    ctx: Context
    source: _Source
    base_name: str
    style: Any
    written: dict[str, Any]
    ref: Reference
    conversion: Verification
    f32_path: Path
    progress: _Progress
    heldout: str


def export(options: Options, ctx: Context) -> dict[str, Any]:
    source = _source(options, ctx)
    style = style_for_model(source.model_dir)
    text, text_source = _heldout(options, ctx, source.parents[0], style)
    n_tensors = _n_tensors(source.model_dir)  # exact after the first write (tied embeddings drop one)
    writes = sum(1 for q in options.quant if q in ("f16", "bf16"))
    progress = _Progress(ctx, total=n_tensors * (1 + writes) + _REF_STEPS + 1 + 2 * len(options.quant))
    scratch = ctx.staging_dir("gguf")
    staged_dirs: list[Path] = []
    try:
        progress.phase("writing the F32 reference GGUF")
        f32_path = scratch / f"{_safe_name(source.name)}-f32.gguf"
        written = write_gguf(source.model_dir, f32_path, "f32", progress.callback(),
                             state_dict=source.state_dict, name=source.name)
        progress.total += (written["n_tensors"] - n_tensors) * (1 + writes)
        ctx.log(f"{written['arch']} GGUF, {written['n_tensors']} tensors, "
                f"{'tied' if written['tied_embeddings'] else 'separate'} output embedding, "
                f"tokenizer {written['tokenizer']['model']}/{written['tokenizer']['pre']}")

        progress.phase(f"running LitGPT on probe prompts and {text_source}")
        ref = Reference.build(source.model_dir, heldout_text=text, state_dict=source.state_dict,
                              max_ppl_tokens=options.ppl_tokens, progress=progress.scaled(_REF_STEPS))
        progress.phase("verifying the F32 conversion in llama.cpp")
        tolerance = max(options.tolerance, by_name(written["family"]).f32_tolerance)
        conversion = verify_gguf(f32_path, ref, exact=True, tolerance=tolerance,
                                 max_ppl_increase=options.max_ppl_increase)
        progress.step()
        if not conversion.passed:
            raise VerificationFailed(
                f"the F32 conversion does not match LitGPT ({'; '.join(conversion.problems)}); no file was registered")
        ctx.log(f"F32 conversion verified: logits within {conversion.rel_diff:.1e} of LitGPT, greedy tokens identical")

        run = _Run(options, ctx, source, _safe_name(source.name), style, written, ref, conversion, f32_path,
                   progress, text_source)
        # F32 goes last: its file is the quantizer's input until then.
        order = [q for q in options.quant if q != "f32"] + [q for q in options.quant if q == "f32"]
        files = []
        for qtype in order:
            staged_dirs.append(ctx.staging_dir("gguf"))
            files.append(_one_file(run, qtype, staged_dirs[-1]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for staged in staged_dirs:
            shutil.rmtree(staged, ignore_errors=True)  # registered ones were renamed away already

    failures = [f"{f['quant']}: {'; '.join(f['problems'])}" for f in files if not f["passed"]]
    if failures:
        raise VerificationFailed("verification failed, file(s) not registered: " + " | ".join(failures))
    table = {
        "title": f"GGUF export of {source.name} (perplexity on {text_source}, LitGPT: {_fmt(ref.ref_ppl)})",
        "columns": ["type", "size", "perplexity", "Δppl", "max |Δlogit|", "greedy", "fallbacks", "artifact"],
        "rows": [[f["quant"], fmt_bytes(f["size_bytes"]), _fmt(f["ppl"]), _fmt(f["ppl_delta"]),
                  _fmt(f["max_abs_logit_diff"]), "=" if f["greedy_identical"] else "≠", f["fallbacks"],
                  f["artifact"]] for f in files],
    }
    return {"files": files, "conversion": conversion.to_json(), "heldout": text_source, "tables": [table]}


def _one_file(run: _Run, qtype: str, staged: Path) -> dict[str, Any]:
    """Make, verify and (when it passes) register the file of one type; returns its summary."""
    fname = f"{run.base_name}-{qtype}.gguf"
    path = staged / fname
    progress = run.progress
    progress.phase(f"{'writing' if qtype in BASE_TYPES else 'quantizing to'} {qtype}")
    report: dict[str, Any] = {"tensor_types": {}, "fallbacks": []}
    if qtype == "f32":
        os.replace(run.f32_path, path)
        check = run.conversion
    else:
        if qtype in BASE_TYPES:
            write_gguf(run.source.model_dir, path, qtype, progress.callback(), name=run.source.name,
                       state_dict=run.source.state_dict)
        else:
            report = quantize(run.f32_path, path, qtype)
            if report["fallbacks"]:
                first = report["fallbacks"][0]
                run.ctx.log(f"{qtype}: {len(report['fallbacks'])} tensor(s) fell back because their rows are not "
                            f"a multiple of the block size, e.g. {first['tensor']} -> {first['actual']}", "warning")
        progress.phase(f"verifying {qtype} in llama.cpp")
        check = verify_gguf(path, run.ref, exact=False, tolerance=run.options.tolerance,
                            max_ppl_increase=run.options.max_ppl_increase)
    progress.step(2)
    entry: dict[str, Any] = {
        "quant": qtype, "file": fname, "passed": check.passed, "problems": check.problems,
        "ppl": _finite(check.ppl), "ref_ppl": _finite(check.ref_ppl), "ppl_delta": _finite(check.ppl_delta),
        "size_bytes": path.stat().st_size, "fallbacks": len(report["fallbacks"]),
        "max_abs_logit_diff": _finite(check.max_abs_diff), "greedy_identical": check.greedy_identical,
    }
    if not check.passed:
        run.ctx.log(f"{fname} failed verification and is not registered: {'; '.join(check.problems)}", "error")
        return entry
    (staged / "Modelfile").write_text(modelfile(fname, run.style, run.written["eos_token"]), encoding="utf-8")
    metrics = {"perplexity": check.ppl, "ref_perplexity": check.ref_ppl, "ppl_delta": check.ppl_delta,
               "size_bytes": float(entry["size_bytes"]), "max_abs_logit_diff": check.max_abs_diff}
    art = run.ctx.register(
        "gguf", staged, name=f"{run.base_name}-{qtype}", parents=run.source.parents,
        metadata={
            "file": fname, "quant": qtype, "arch": run.written["arch"], "family": run.written["family"],
            "tied_embeddings": run.written["tied_embeddings"], "tokenizer": run.written["tokenizer"],
            "prompt_style": run.style.name if run.style else None, **run.source.notes,
            "tensor_types": report["tensor_types"], "fallbacks": report["fallbacks"],
            "verification": check.to_json(), "conversion": run.conversion.to_json(), "heldout": run.heldout,
        },
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
    )
    entry.update(artifact=art.id, path=str(art.path / fname), modelfile=str(art.path / "Modelfile"))
    run.ctx.metric(None, **{f"ppl_{qtype}": check.ppl})
    if run.options.out:
        # Several files share the out directory: each Modelfile is named after its GGUF.
        entry["copied_to"], entry["copied_modelfile"] = _copy_out(
            [(art.path / fname, fname), (art.path / "Modelfile", f"{fname[:-5]}.Modelfile")],
            Path(run.options.out).expanduser())
    return entry
