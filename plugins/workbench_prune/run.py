"""The prune run: calibrate → choose → cut → heal → measure → register.

The cut model is kept in the run's checkpoint directory (`checkpoints/pruned/`, written under a
temporary name and renamed), so a resumed healing pass starts from the very weights the first
attempt pruned rather than measuring again.

Heavy module: imported by `PruneStage.run()` only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from workbench_evaluate.tradeoff import heldout_windows, measure, measure_speed, tradeoff_table
from workbench_export.families import read_config
from workbench_pretrain.data import TokenWindows

from workbench.context import Context
from workbench.errors import UserError
from workbench.ml.checkpoint import (
    load_config,
    load_model,
    load_state_dict,
    read_meta,
    save_model_dir,
)
from workbench.ml.lora import LoRASettings
from workbench.weightfiles import model_weights
from workbench_prune.heal import HealSettings, heal
from workbench_prune.plan import Plan, make_plan
from workbench_prune.prune import Removal, choose, measure_importance, prune_state_dict
from workbench_prune.stage import Options, calibration_dataset, pretrain_dataset

RECORD = "prune.json"


def _cut(options: Options, ctx: Context, source: Path, plan: Plan, calibration: Any, seq_len: int) -> Path:
    """Measure importance, remove the chosen units, and keep the result in the run directory."""
    from workbench_data.tokencache import token_array

    done = ctx.checkpoints_dir / "pruned"
    if ctx.resume_from and (done / RECORD).exists():
        ctx.log("reusing the pruned model of the first attempt")
        return done
    tokens = token_array(calibration.path, source, "train", progress=lambda d, t: ctx.progress(
        d, t, unit="doc", desc="tokenizing calibration text"))
    windows = TokenWindows(tokens, seq_len, options.seed, what=f"the train split of dataset {calibration.id}")
    n = min(options.calibration_samples, windows.n_windows)
    model = load_model(source, dtype=torch.float32)
    batches = (windows.batch(i, min(4, n - i))[:, :-1] for i in range(0, n, 4))
    steps = -(-n // 4)

    def progress(done: int) -> None:
        ctx.check_cancelled()  # nothing is saved yet: a resumed run measures again
        ctx.progress(done, steps, unit="batch", desc="measuring importance")

    importance = measure_importance(model, batches, progress)
    removal = choose(importance, plan)
    sd, config = prune_state_dict(model.state_dict(), model.config, removal)
    del model
    ctx.log(f"removing {len(removal.blocks)} block(s) {removal.blocks}, {plan.groups} KV group(s) and "
            f"{plan.channels} MLP channel(s) per remaining block; {plan.params_after:,} of "
            f"{plan.params_before:,} parameters left ({plan.kept:.1%})")
    tmp = done.with_name("pruned.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, sd, config, tokenizer_dir=source, meta=read_meta(source))
    (tmp / RECORD).write_text(json.dumps({
        "removed": removal.to_json(), "plan": plan.to_json(),
        "importance": {"blocks": importance.blocks},
    }))
    shutil.rmtree(done, ignore_errors=True)
    os.replace(tmp, done)
    return done


def prune(options: Options, ctx: Context) -> dict[str, Any]:
    source = ctx.artifact(options.model, "model")
    calibration = calibration_dataset(ctx, options, source)
    heal_data = pretrain_dataset(ctx, options.heal_data, "--heal-data") if options.heal_data else calibration
    plan = make_plan(read_config(source.path), options.target, options.method)
    src_config = load_config(source.path)
    seq_len = options.max_seq_length if options.max_seq_length is not None else min(src_config.block_size, 256)
    if seq_len > src_config.block_size:
        raise UserError(f"--max-seq-length {seq_len} is longer than the model's context of {src_config.block_size} tokens")

    pruned_dir = _cut(options, ctx, source.path, plan, calibration, seq_len)
    record = json.loads((pruned_dir / RECORD).read_text())
    removal = Removal.from_json(record["removed"])
    config = load_config(pruned_dir)

    heldout = heldout_windows(calibration.path, source.path, seq_len, options.ppl_tokens)
    if not len(heldout):
        ctx.log(f"dataset {calibration.id} has no validation text; perplexity is not measured", "warning")
    figures: dict[str, Any] = {}
    state: dict[str, torch.Tensor] | None = None
    if options.heal != "none":
        from workbench_data.tokencache import token_array

        tokens = token_array(heal_data.path, source.path, "train", progress=lambda d, t: ctx.progress(
            d, t, unit="doc", desc="tokenizing healing text"))
        train = TokenWindows(tokens, seq_len, options.seed, what=f"the train split of dataset {heal_data.id}")
        val = heldout_windows(heal_data.path, source.path, seq_len, options.eval_batches * seq_len)
        micro = options.micro_batch_size if options.micro_batch_size is not None else options.batch_size
        settings = HealSettings(
            mode=options.heal, steps=options.max_steps,
            lr=options.lr if options.lr is not None else (1e-3 if options.heal == "lora" else 3e-4),
            batch_size=options.batch_size, micro_batch_size=micro, warmup_steps=options.warmup_steps,
            weight_decay=options.weight_decay, grad_clip=options.grad_clip, eval_every=options.eval_every,
            eval_batches=options.eval_batches, checkpoint_every=options.checkpoint_every, seed=options.seed,
            device=options.device, precision=options.precision, force=options.force,
            lora=LoRASettings(r=options.rank, alpha=options.alpha, dropout=options.dropout,
                              targets=tuple(options.targets)),
        )
        state, figures = heal(pruned_dir, train, val, settings, ctx)

    percent = round(100 * plan.kept)
    name = options.name or f"{source.name}-pruned{percent}"
    prune_meta = {
        "target": options.target, "kept": record["plan"]["kept"], "method": list(options.method),
        "heal": options.heal, "source_model": source.id, "calibration": calibration.id,
        "heal_data": heal_data.id if options.heal != "none" else None,
        "config_before": _shape(src_config), "config_after": _shape(config),
        "removed_blocks": removal.blocks, "groups_per_layer": record["plan"]["groups"],
        "channels_per_layer": record["plan"]["channels"],
        "removed_groups": record["removed"]["groups"], "removed_channels": record["removed"]["channels"],
    }
    staged = ctx.staging_dir("model")
    try:
        if state is None:
            weights = load_state_dict(pruned_dir)
        else:  # healed in F32: stored in the dtype the source was stored in
            dtype = stored_dtype(source.path)
            weights = {k: v.to(dtype) for k, v in state.items()}
        save_model_dir(staged, weights, config, tokenizer_dir=source.path,
                       meta={**read_meta(source.path), "base_model": source.id, "prune": prune_meta})
        ctx.log("measuring the source and the pruned model on held-out text")
        rows = [measure(f"source {source.name}", source.path, heldout)]
        if state is not None:
            rows.append(measure("pruned, not healed", pruned_dir, heldout))
        rows.append(measure(f"pruned{', healed (' + options.heal + ')' if state is not None else ''}",
                            staged, heldout))
        if options.speed:  # the unhealed cut has the final model's shape: its speed adds nothing
            ctx.log("exporting both models to Q4_K_M and timing llama.cpp decoding")

            def progress(desc: str, done: int, total: int) -> None:
                ctx.check_cancelled()
                ctx.progress(done, total, unit="step", desc=desc)

            measure_speed([(rows[0], source.path), (rows[-1], staged)], heldout.reshape(-1), work_dir=ctx.checkpoints_dir,
                          progress=progress)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    final = rows[-1]
    metrics = {k: v for k, v in {
        "params": float(final.params), "perplexity": final.ppl, "source_perplexity": rows[0].ppl,
        "unhealed_perplexity": rows[1].ppl if state is not None else None,
        "q4_k_m_tokens_per_s": final.q4_tokens_per_s, "source_q4_k_m_tokens_per_s": rows[0].q4_tokens_per_s,
        "val_loss": figures.get("val_loss"),
    }.items() if v is not None}
    parents = [source.id, calibration.id] + ([heal_data.id] if options.heal != "none" and heal_data.id != calibration.id else [])
    art = ctx.register("model", staged, name=name, parents=parents, metrics=metrics,
                       metadata={"family": source.metadata.get("family") or read_meta(source.path).get("family"),
                                 "base_model": source.id, "prune": prune_meta,
                                 "measured": [m.to_json() for m in rows]})
    shutil.rmtree(pruned_dir, ignore_errors=True)  # the artifact holds the result now
    table = tradeoff_table(rows, f"Pruning {source.name} to {plan.kept:.1%} of its parameters "
                                 f"(perplexity on {calibration.name} val)")
    units = [["blocks removed", ", ".join(map(str, removal.blocks)) or "none"],
             ["KV groups removed per block", f"{plan.groups} of {_shape(src_config)['n_query_groups']}"],
             ["MLP channels removed per block", f"{plan.channels} of {src_config.intermediate_size}"],
             ["healing", f"{options.heal}, {figures['steps']} steps" if figures else "none"]]
    return {
        "model": art.id, "kept": plan.kept, "params": final.params, "perplexity": final.ppl,
        "source_perplexity": rows[0].ppl, "unhealed_perplexity": metrics.get("unhealed_perplexity"),
        "removed": record["removed"], "config": _shape(config), "measured": [m.to_json() for m in rows],
        "tables": [table, {"title": "Removed units", "columns": ["", "value"], "rows": units}],
    }


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype of the weights in `model_dir`, read from the safetensors header alone (F32 for a
    directory with `lit_model.pth` only)."""
    from safetensors import safe_open

    path = model_weights(model_dir)
    if path.suffix != ".safetensors":
        return torch.float32
    with safe_open(str(path), "pt") as fh:
        first = next(iter(fh.keys()), None)
        name = fh.get_slice(first).get_dtype() if first is not None else "F32"
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(name, torch.float32)


def _shape(config: Any) -> dict[str, int]:
    return {k: int(getattr(config, k)) for k in ("n_layer", "n_head", "n_query_groups", "head_size",
                                                   "intermediate_size", "n_embd")}
