"""The DPO loop, top to bottom: data → memory preflight → policy (+ reference) → resume → train
→ adapter and merged model.

The policy is the input model with a fresh LoRA adapter. A fresh adapter's B matrices are zero, so
at step 0 the policy equals the reference and the sigmoid loss is exactly log 2. Unless a separate
reference model is given, the reference is the same module with the adapter switched off
(`adapters_disabled`), run under `torch.no_grad()`: no second copy of the weights, no activations
kept for it.

Lightning Fabric carries the precision (fp32 on CPU, bf16/fp16 mixed on CUDA and MPS), so the
same loop runs on every device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.errors import UserError
from workbench.hardware import (
    choose_device,
    estimate_training_memory,
    fmt_bytes,
    mlp_shape,
    preflight,
)
from workbench.ml.checkpoint import (
    load_config,
    load_model,
    load_tokenizer,
    read_meta,
    save_model_dir,
)
from workbench.ml.examples import IGNORE, pad_id
from workbench.ml.lora import (
    LoRASettings,
    adapter_state_dict,
    adapters_disabled,
    count_parameters,
    load_adapter,
    load_lora_model,
    lora_config,
    merged_state_dict,
    save_adapter,
)
from workbench.ml.training import (
    Batches,
    Micro,
    SeededOrder,
    TrainLoop,
    make_fabric,
    training_precision,
    warmup_cosine,
)
from workbench.prompts import PromptStyle, get_style, style_for_model
from workbench_dpo.loss import PairStats, preference_loss, sequence_logps
from workbench_dpo.pairs import Pair, collate_pairs, encode_rows
from workbench_dpo.rows import check_preference_dataset, read_rows

if TYPE_CHECKING:
    from workbench.context import Context
    from workbench_dpo.stage import Options

def pair_forward(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    kind: str,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
) -> PairStats:
    """Preference loss of a (2B, T) batch from `collate_pairs` (chosen rows, then rejected rows).

    `reference=None` scores the reference with the policy's adapter switched off. With
    `sft_weight` the chosen answers' mean token NLL, times the weight, is added to each pair's loss.
    """
    n = ids.shape[0] // 2
    average = kind == "ipo"  # IPO's margin is defined on per-token log-probabilities
    with torch.no_grad():
        if reference is None:
            with adapters_disabled(policy):
                ref = sequence_logps(policy(ids), labels, average=average)
        else:
            ref = sequence_logps(reference(ids), labels, average=average)
    logps = sequence_logps(policy(ids), labels, average=average)
    stats = preference_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta=beta, kind=kind,
                            label_smoothing=label_smoothing)
    if sft_weight:
        tokens = (labels[:n, 1:] != IGNORE).sum(-1).clamp(min=1)
        nll = -(logps[:n] if average else logps[:n] / tokens)
        stats = replace(stats, losses=stats.losses + sft_weight * nll, chosen_nll=nll.detach())
    return stats


def summarize_tensors(stats: Sequence[PairStats], *, reference: bool = False) -> dict[str, torch.Tensor]:
    """Means over every pair in `stats`: loss, rewards, margin, accuracy, log-probabilities; still
    on the device, so a training step reads them all at once."""

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(s, name).detach().float() for s in stats])

    chosen, rejected = cat("chosen_rewards"), cat("rejected_rewards")
    out = {
        "loss": cat("losses").mean(),
        "reward_chosen": chosen.mean(),
        "reward_rejected": rejected.mean(),
        "reward_margin": (chosen - rejected).mean(),
        "reward_accuracy": (chosen > rejected).float().mean(),
        "logps_chosen": cat("policy_chosen").mean(),
        "logps_rejected": cat("policy_rejected").mean(),
    }
    if all(s.chosen_nll is not None for s in stats):
        out["chosen_nll"] = cat("chosen_nll").mean()
    if reference:
        out["ref_logps_chosen"] = cat("reference_chosen").mean()
        out["ref_logps_rejected"] = cat("reference_rejected").mean()
    return out


def summarize(stats: Sequence[PairStats], *, reference: bool = False) -> dict[str, float]:
    return {k: v.item() for k, v in summarize_tensors(stats, reference=reference).items()}


def chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def train(options: Options, ctx: Context) -> dict[str, Any]:
    # --- inputs ------------------------------------------------------------------------------
    model_art = ctx.artifact(options.model, "model")
    data_art = ctx.artifact(options.dataset, "dataset")
    ref_art = ctx.artifact(options.reference, "model") if options.reference else None
    model_dir = model_art.path
    check_preference_dataset(data_art.path, options.dataset)
    device = choose_device(options.device)
    precision = training_precision(device, options.precision)
    label_smoothing = options.label_smoothing if options.label_smoothing is not None else 0.1
    if options.loss != "cdpo":
        label_smoothing = 0.0

    style = style_for_model(model_dir)
    if style is None:
        style = get_style("chatml")
        ctx.log("the model stores no prompt style; using chatml", level="warning")
    config = load_config(model_dir)
    max_length = options.max_seq_length if options.max_seq_length is not None else config.block_size
    if max_length > config.block_size:
        raise UserError(f"--max-seq-length {max_length} is longer than the model's context of {config.block_size}")

    # --- data: every pair is encoded (and length-checked) before anything heavy happens ----------
    tokenizer = load_tokenizer(model_dir)
    train_pairs = encode_rows(read_rows(data_art.path / "train.jsonl"), tokenizer, style, max_length)
    val_pairs = encode_rows(read_rows(data_art.path / "val.jsonl"), tokenizer, style, max_length)
    val_pairs = val_pairs[: options.eval_pairs]
    if not train_pairs:
        raise UserError(f"dataset '{options.dataset}' has no training pairs")
    pad = pad_id(tokenizer)
    from workbench_data.replay import replay_source

    replay, replay_data = replay_source(options, ctx, model_dir, options.seed)
    batches = Batches.plan(len(train_pairs), options.batch_size, options.micro_batch_size, epochs=options.epochs,
                           max_steps=options.max_steps)
    batch_size, micro, total = batches.batch_size, batches.micro_batch_size, batches.steps
    longest = max(p.longest for p in train_pairs + val_pairs)

    # --- memory preflight, on the meta device: nothing is allocated yet -------------------------
    settings = LoRASettings(r=options.rank, alpha=options.alpha, dropout=options.dropout,
                            targets=tuple(options.targets))
    from litgpt.lora import GPT as LoRAGPT
    from litgpt.lora import mark_only_lora_as_trainable

    with torch.device("meta"):
        shape = LoRAGPT(lora_config(model_dir, settings))
    mark_only_lora_as_trainable(shape)
    n_params, n_trainable = count_parameters(shape)
    estimate = estimate_training_memory(
        n_params=n_params, trainable_params=n_trainable, batch_size=2 * micro + (replay.windows if replay else 0),
        seq_len=max(longest, replay.length if replay else 0),
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
        vocab_size=config.padded_vocab_size, precision=precision, **mlp_shape(config),
    )
    if ref_art is not None:
        ref_params = sum(p.numel() for p in _meta_gpt(ref_art.path).parameters())
        estimate = replace(estimate, weights=estimate.weights + ref_params * _weight_bytes(precision))
    figures = preflight(estimate, device, force=options.force, what="this DPO run")
    ctx.log(
        f"{len(train_pairs)} training pairs, {len(val_pairs)} held-out; {batches.describe('pairs')}; "
        f"{device}, {precision}; memory estimate {fmt_bytes(figures['estimate_bytes'])} of "
        f"{fmt_bytes(figures['available_bytes'])} available"
    )

    # --- policy and reference ----------------------------------------------------------------
    fabric = make_fabric(device, precision)
    raw = load_lora_model(model_dir, settings, seed=options.seed)
    raw.max_seq_length = max(longest, replay.length if replay else 0)
    stored_dtype = _stored_dtype(model_dir)
    model = fabric.setup_module(raw)
    inner = torch.optim.AdamW(
        [p for p in raw.parameters() if p.requires_grad], lr=options.lr, weight_decay=options.weight_decay,
    )
    scheduler = warmup_cosine(inner, warmup=options.warmup_steps, total=total)
    optimizer = fabric.setup_optimizers(inner)
    reference = None
    if ref_art is not None:
        ref_model = load_model(ref_art.path)
        if ref_model.config.padded_vocab_size != config.padded_vocab_size:
            raise UserError(f"reference model '{options.reference}' has a different vocabulary size from the model")
        ref_model.max_seq_length = longest
        ref_model.requires_grad_(False)
        reference = fabric.setup_module(ref_model)
    ctx.log(f"policy: {n_params:,} parameters, {n_trainable:,} in the adapter; reference: "
            + (f"model {ref_art.id}" if ref_art is not None else "the same weights with the adapter off"))
    loop = TrainLoop(
        ctx, fabric, model, optimizer, scheduler, order=SeededOrder(len(train_pairs), options.seed), batches=batches,
        grad_clip=options.grad_clip, eval_every=options.eval_every, checkpoint_every=options.checkpoint_every,
        seed=options.seed, state=lambda: adapter_state_dict(raw), load=lambda weights: load_adapter(raw, weights),
        desc="dpo",
    )
    loop.resume()

    def to_device(pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = collate_pairs(pairs, pad)
        return fabric.to_device(ids), fabric.to_device(labels)

    def micro_step(idx: list[int]) -> Micro:
        pairs = [train_pairs[i] for i in idx]
        ids, labels = to_device(pairs)
        out = pair_forward(model, reference, ids, labels, beta=options.beta, kind=options.loss,
                           label_smoothing=label_smoothing, sft_weight=options.sft_weight)
        stats = {k: v for k, v in summarize_tensors([out]).items() if k != "loss"}
        loss, tokens = out.losses.mean(), sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
        if replay is not None:
            replayed = replay.loss(model, idx, fabric.device)
            stats |= {"preference_loss": loss.detach(), "replay_loss": replayed.detach()}
            loss, tokens = loss + replayed, tokens + replay.tokens_per_batch
        return Micro(loss, stats, tokens=tokens)

    def evaluate() -> dict[str, float]:
        model.eval()
        stats = []
        with torch.no_grad():
            for idx in chunks(range(len(val_pairs)), micro):
                ids, labels = to_device([val_pairs[i] for i in idx])
                stats.append(pair_forward(model, reference, ids, labels, beta=options.beta, kind=options.loss,
                                          label_smoothing=label_smoothing, sft_weight=options.sft_weight))
        model.train()
        return {f"val_{k}": v for k, v in summarize(stats, reference=True).items()}

    if not val_pairs:
        ctx.log("the dataset has no held-out pairs (val.jsonl); no held-out metrics", level="warning")
    val_metrics = loop.run(micro_step, evaluate if val_pairs else None)

    # --- outputs: the adapter, then the merged model with the prompt style carried over ---------
    name = options.name or f"{model_art.name}-dpo"
    recipe = {"method": "dpo", "loss": options.loss, "beta": options.beta, "label_smoothing": label_smoothing,
              "sft_weight": options.sft_weight, "steps": total, "batch_size": batch_size, "lr": options.lr, "dataset": data_art.id,
              "reference": ref_art.id if ref_art is not None else "adapter-off",
              **({"replay": replay_data.id} if replay_data is not None else {})}
    parents = [model_art.id, data_art.id] + ([ref_art.id] if ref_art is not None else []) + (
        [replay_data.id] if replay_data is not None else [])
    final = {k: round(v, 6) for k, v in val_metrics.items()} or {k: round(v, 6) for k, v in ctx.last_metrics.items()}

    staged = ctx.staging_dir("adapter")
    save_adapter(staged, raw, settings, model_art.id, extra={"dpo": recipe, "prompt_style": style.to_json()})
    adapter = ctx.register("adapter", staged, name=f"{name}-adapter", parents=parents,
                           metadata={"base_model": model_art.id, **recipe}, metrics=final)

    merged = {k: v.to(stored_dtype) if v.is_floating_point() else v for k, v in merged_state_dict(raw).items()}
    staged = ctx.staging_dir("model")
    save_model_dir(staged, merged, config, tokenizer_dir=model_dir, meta=_merged_meta(model_dir, style, recipe, adapter.id))
    merged_art = ctx.register(
        "model", staged, name=name, parents=[model_art.id, adapter.id, *parents[1:]],
        metadata={"family": model_art.metadata.get("family"), "prompt_style": style.name, **recipe},
        metrics=final,
    )
    result: dict[str, Any] = {"model": merged_art.id, "adapter": adapter.id, "steps": total}
    if val_metrics:
        rows = [[k.removeprefix("val_"), round(v, 4)] for k, v in val_metrics.items()]
        result["tables"] = [{"title": "held-out pairs", "columns": ["metric", "value"], "rows": rows}]
    return result


def _weight_bytes(precision: str) -> int:
    return 2 if precision in ("16-true", "bf16-true") else 8 if precision.startswith("64") else 4


def _meta_gpt(model_dir: Path) -> torch.nn.Module:
    from litgpt import GPT

    with torch.device("meta"):
        return GPT(load_config(model_dir))


def _stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype of the weights on disk, so the merged model is saved as its base was."""
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        from workbench.weightfiles import check_safetensors

        check_safetensors(st)
        with safe_open(str(st), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith(".weight"):
                    return fh.get_slice(key)[:1].dtype
    return torch.float32


def _merged_meta(model_dir: Path, style: PromptStyle, recipe: dict[str, Any], adapter_id: str) -> dict[str, Any]:
    meta = read_meta(model_dir)
    meta["prompt_style"] = style.to_json()
    if style.eos_token and not meta.get("eos_token"):
        meta["eos_token"] = style.eos_token
    meta["finetune"] = {**recipe, "adapter": adapter_id}
    return meta
