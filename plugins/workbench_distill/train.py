"""The distillation run, top to bottom: `plan` (inputs, sizes, memory) → `read_corpus` (the
sequences) → the teacher pass (top-k logits to disk, `workbench_distill.teacher`) → `fit` (the
student's training on the shared `TrainLoop`: validation, checkpoints, cancel, exact resume) →
`write_student` (the model and a table comparing it with the teacher).

The teacher is loaded only for the teacher pass and freed before the student is built. The
student reads the cache rows in the shared seeded order (`workbench.ml.training.SeededOrder`), so
a step number is a data position and a resumed run reads what an uninterrupted one would.

Heavy module (torch, litgpt, lightning): imported by `DistillStage.run()` only.
"""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.errors import UserError
from workbench.hardware import (
    choose_device,
    choose_precision,
    estimate_training_memory,
    fmt_bytes,
    mlp_shape,
    preflight,
)
from workbench.ml.checkpoint import (
    config_to_dict,
    load_config,
    load_state_dict,
    read_meta,
    save_model_dir,
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
from workbench.weightfiles import check_model_dir, model_weights
from workbench_distill.loss import distill_loss
from workbench_distill.stage import check_same_tokenizer, student_kind
from workbench_distill.teacher import (
    TeacherCache,
    choose_windows,
    heldout_perplexity,
    sequences,
    teacher_topk,
)

if TYPE_CHECKING:
    from litgpt import GPT, Config

    from workbench.context import Context
    from workbench.store import Artifact
    from workbench_distill.stage import Options

@dataclass
class Plan:
    """The run's inputs and sizes, fixed before anything heavy is loaded."""

    teacher: Artifact
    data: Artifact
    start_from: Artifact | None  # the student's starting model, None for a fresh student
    from_teacher: bool  # a fresh student cut from the teacher's weights rather than random ones
    t_config: Config
    s_config: Config
    device: str
    precision: str  # the student's training precision
    eval_precision: str  # the teacher pass's and the perplexity's
    seq_len: int
    batch: int
    micro: int
    lr: float
    t_params: int
    s_params: int


@dataclass
class Corpus:
    train: np.ndarray  # the train split's token ids (memory map)
    starts: np.ndarray  # offsets of the training sequences in `train`
    val_rows: torch.Tensor  # validation windows scored every --eval-every steps
    heldout: np.ndarray  # the whole validation split, for the perplexity at the end
    steps: int
    warmup: int


def distill(options: Options, ctx: Context) -> dict[str, Any]:
    from workbench_evaluate.backends import TorchBackend

    plan = make_plan(options, ctx)
    corpus = read_corpus(plan, options, ctx)
    check_memory(plan, options)
    ctx.log(
        f"distilling {plan.teacher.name} ({plan.t_params:,} parameters) into "
        f"{options.student if plan.start_from is None else plan.start_from.name} ({plan.s_params:,}): "
        f"{len(corpus.starts)} sequences of {plan.seq_len} tokens, {corpus.steps} steps of {plan.batch}, "
        f"T={options.temperature}, kd_weight={options.kd_weight}, top-{options.top_k}; {plan.device}, {plan.precision}"
    )

    # --- the teacher pass; the teacher is in memory for this call only -------------------------------
    def load_teacher() -> Any:
        return TorchBackend(plan.teacher.path, context=plan.seq_len, device=plan.device,
                            precision=plan.eval_precision, batch_size=plan.micro, threads=None)

    def teacher_ppl(backend: Any) -> float | None:
        return _perplexity(ctx, backend, plan.teacher.path, corpus.heldout, plan.seq_len, f"teacher {plan.teacher.name}")

    fingerprint = {"teacher": plan.teacher.id, "dataset": plan.data.id, "seq_len": plan.seq_len,
                   "top_k": options.top_k, "sequences": len(corpus.starts), "seed": options.seed}
    cache = teacher_topk(ctx, load_teacher, corpus.train, corpus.starts, seq_len=plan.seq_len, top_k=options.top_k,
                         vocab_size=plan.t_config.vocab_size, batch=plan.micro, fingerprint=fingerprint,
                         perplexity=teacher_ppl)
    gc.collect()
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    ctx.log(f"the teacher's top-{options.top_k} tokens hold {cache.coverage:.1%} of its probability on average; "
            f"the KL renormalises them ({fmt_bytes(cache.size_bytes())} on disk)")

    # --- the student ------------------------------------------------------------------------------
    state_dict, figures = fit(plan, options, corpus, cache, fingerprint, ctx)
    return write_student(plan, options, corpus, cache, state_dict, figures, ctx)


# ----------------------------------------------------------------------------------------------
# plan and data


def make_plan(options: Options, ctx: Context) -> Plan:
    from workbench_evaluate.tradeoff import count_parameters

    teacher = ctx.artifact(options.teacher, "model")
    data = ctx.artifact(options.dataset, "dataset")
    start_from = ctx.artifact(options.student, "model") if student_kind(options.student) == "model" else None
    check_model_dir(teacher.path)
    if start_from is not None:
        check_model_dir(start_from.path)
        check_same_tokenizer(teacher, start_from)  # again: the files may have changed since validate()
    device = choose_device(options.device)
    t_config = load_config(teacher.path)
    s_config = student_config(options.student, t_config, start_from)
    seq_len = options.max_seq_length if options.max_seq_length is not None else min(t_config.block_size, s_config.block_size)
    if seq_len > t_config.block_size:
        raise UserError(f"--max-seq-length {seq_len} is longer than the teacher's context of {t_config.block_size} tokens")
    if seq_len > s_config.block_size:
        if start_from is not None:
            raise UserError(f"--max-seq-length {seq_len} is longer than the student's context of {s_config.block_size} tokens")
        s_config = type(s_config)(**{**config_to_dict(s_config), "block_size": seq_len})
    if options.top_k > t_config.vocab_size:
        raise UserError(f"--top-k {options.top_k} is more than the teacher's vocabulary of {t_config.vocab_size} tokens")
    from_teacher = start_from is None and options.init != "random" and _from_teacher(options, t_config, s_config, ctx)
    micro = options.micro_batch_size if options.micro_batch_size is not None else options.batch_size
    lr = options.lr if options.lr is not None else (
        preset_lr(options.student) if start_from is None and not from_teacher else 1e-4)
    return Plan(
        teacher=teacher, data=data, start_from=start_from, from_teacher=from_teacher, t_config=t_config, s_config=s_config, device=device,
        precision=training_precision(device, options.precision),
        eval_precision=choose_precision(device, training=False), seq_len=seq_len, batch=options.batch_size,
        micro=micro, lr=lr, t_params=count_parameters(t_config), s_params=count_parameters(s_config),
    )


def _from_teacher(options: Options, t_config: Config, s_config: Config, ctx: Context) -> bool:
    """Whether the fresh student can start from the teacher's weights; --init teacher insists."""
    from workbench_distill.from_teacher import mismatch

    why = mismatch(t_config, s_config)
    if why is not None and options.init == "teacher":
        raise UserError(f"--init teacher: the student {options.student} cannot start from the teacher's weights: {why}")
    if why is not None:
        ctx.log(f"the student starts from random weights: {why}")
    return why is None


def read_corpus(plan: Plan, options: Options, ctx: Context) -> Corpus:
    """Windows of the train split, from the shared token cache with the teacher's tokenizer."""
    from workbench_data.tokencache import token_array
    from workbench_evaluate.tasks import token_stream
    from workbench_pretrain.data import validation_windows

    def tokenizing(split: str) -> Any:
        return lambda done, total: ctx.progress(done, total, unit="doc", desc=f"tokenizing the {split} split")

    data, seq_len = plan.data, plan.seq_len
    train = token_array(data.path, plan.teacher.path, "train", progress=tokenizing("train"))
    if len(train) < seq_len + 1:
        raise UserError(
            f"the train split of dataset {data.id} holds {len(train):,} tokens, fewer than one "
            f"sequence of {seq_len + 1}; lower --max-seq-length or add data"
        )
    available = (len(train) - 1) // seq_len
    steps = options.max_steps if options.max_steps is not None else options.epochs * math.ceil(available / plan.batch)
    val = token_array(data.path, plan.teacher.path, "val", progress=tokenizing("val"))
    heldout = token_stream(data.path, plan.teacher.path, None)
    if len(heldout) < 2:
        ctx.log(f"dataset {data.id} has no validation tokens; validation and perplexity are skipped", "warning")
    return Corpus(
        train=train, starts=choose_windows(len(train), seq_len, steps * plan.batch, options.seed),
        val_rows=validation_windows(val, seq_len, options.eval_batches * plan.micro), heldout=heldout,
        steps=steps, warmup=options.warmup_steps if options.warmup_steps is not None else max(1, round(0.05 * steps)),
    )


def check_memory(plan: Plan, options: Options) -> None:
    """The teacher pass and the student's training happen one after the other: each must fit."""
    t, s = plan.t_config, plan.s_config
    preflight(estimate_training_memory(
        n_params=plan.t_params, trainable_params=0, batch_size=plan.micro, seq_len=plan.seq_len, n_layer=t.n_layer,
        n_embd=t.n_embd, n_head=t.n_head, vocab_size=t.padded_vocab_size, precision=plan.eval_precision, **mlp_shape(t),
    ), plan.device, force=options.force, what=f"the teacher pass of {plan.teacher.name}")
    estimate = estimate_training_memory(
        n_params=plan.s_params, trainable_params=plan.s_params, batch_size=plan.micro, seq_len=plan.seq_len,
        n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head, vocab_size=s.padded_vocab_size, precision=plan.precision, **mlp_shape(s),
    )
    # The KL holds the student's logits at temperature T and their softmax's gradient besides the usual ones.
    extra = 2 * plan.micro * plan.seq_len * s.padded_vocab_size * 4
    preflight(replace(estimate, activations=estimate.activations + extra), plan.device, force=options.force,
              what="training this student")


# ----------------------------------------------------------------------------------------------
# the loop


def fit(plan: Plan, options: Options, corpus: Corpus, cache: TeacherCache, fingerprint: dict[str, Any],
        ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the student on the shared loop; returns its weights (on the CPU) and the run's figures."""
    fabric = make_fabric(plan.device, plan.precision)
    raw = build_student(fabric, plan, corpus, options.seed, ctx)
    if plan.precision in ("32-true", "16-mixed", "bf16-mixed"):
        raw = raw.float()  # a half-precision model in the workspace trains with fp32 master weights
    raw.max_seq_length = plan.seq_len
    model = fabric.setup_module(raw)
    inner = torch.optim.AdamW(raw.parameters(), lr=plan.lr, weight_decay=options.weight_decay, betas=(0.9, 0.95))
    scheduler = warmup_cosine(inner, warmup=corpus.warmup, total=corpus.steps)
    optimizer = fabric.setup_optimizers(inner)
    loop = TrainLoop(
        ctx, fabric, model, optimizer, scheduler, order=SeededOrder(len(corpus.starts), options.seed),
        batches=Batches(plan.batch, plan.micro, corpus.steps), grad_clip=options.grad_clip,
        eval_every=options.eval_every, checkpoint_every=options.checkpoint_every, seed=options.seed,
        state=raw.state_dict, load=raw.load_state_dict, desc="distilling",
        inputs={**fingerprint, "student": config_to_dict(plan.s_config)},
    )
    loop.resume()

    def micro_step(rows: list[int]) -> Micro:
        seqs = fabric.to_device(sequences(corpus.train, corpus.starts[rows], plan.seq_len))
        values, indices = (fabric.to_device(t) for t in cache.rows(rows))
        parts = distill_loss(model(seqs[:, :-1]), seqs[:, 1:], values, indices,
                             temperature=options.temperature, kd_weight=options.kd_weight)
        return Micro(parts.loss, {"kd": parts.kd.detach(), "ce": parts.ce.detach()}, tokens=len(rows) * plan.seq_len)

    def evaluate() -> dict[str, float]:
        model.eval()
        total = 0.0
        with torch.no_grad():
            for chunk in corpus.val_rows.split(plan.micro):
                chunk = fabric.to_device(chunk)
                logits = model(chunk[:, :-1])
                total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), chunk[:, 1:].reshape(-1))) * len(chunk)
        model.train()
        loss = total / len(corpus.val_rows)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50))}

    evaluated = loop.run(micro_step, evaluate if len(corpus.val_rows) else None)
    weights = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
    return weights, {"loss": loop.last.get("loss", float("nan")), "val_loss": evaluated.get("val_loss"),
                     "trained_s": loop.seconds}


def build_student(fabric: Any, plan: Plan, corpus: Corpus, seed: int, ctx: Context) -> GPT:
    """A model's own weights, the teacher's cut to the student's shape, or fresh weights
    initialised as pretraining does, from `seed`."""
    from litgpt import GPT
    from litgpt.pretrain import initialize_weights

    config, start_from = plan.s_config, plan.start_from
    fabric.seed_everything(seed, verbose=False)
    if plan.from_teacher and not ctx.resume_from:  # a resumed run loads its checkpoint's weights instead
        from workbench_distill.from_teacher import student_from_teacher

        def progress(done: int, total: int) -> None:
            ctx.check_cancelled()
            ctx.progress(done, total, unit="batch", desc="ranking the teacher's blocks and MLP channels")

        model, dropped = student_from_teacher(plan.teacher.path, config, corpus.train, corpus.starts, plan.seq_len,
                                              progress)
        ctx.log(f"the student starts from the teacher's weights without block(s) {dropped or 'none'} and with "
                f"{config.intermediate_size} of {plan.t_config.intermediate_size} MLP channels per block")
        return model
    if start_from is not None:
        with torch.device("meta"):
            model = GPT(config)
        model.load_state_dict(load_state_dict(start_from.path), strict=True, assign=True)
        model.cos, model.sin = model.rope_cache(device=torch.device("cpu"))
        return model
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    return model


# ----------------------------------------------------------------------------------------------
# outputs


def write_student(plan: Plan, options: Options, corpus: Corpus, cache: TeacherCache,
                  state_dict: dict[str, torch.Tensor], figures: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The student model (parents: teacher, data and its start model), measured against the
    teacher on the held-out text (and with --speed in llama.cpp)."""
    from workbench_evaluate.backends import TorchBackend
    from workbench_evaluate.tradeoff import Measured, measure_speed, tradeoff_table

    teacher, start_from = plan.teacher, plan.start_from
    name = options.name or f"{teacher.name}-distilled"
    recipe = {"teacher": teacher.id, "dataset": plan.data.id, "student": options.student,
              "temperature": options.temperature, "kd_weight": options.kd_weight, "top_k": options.top_k,
              "steps": corpus.steps, "batch_size": plan.batch, "max_seq_length": plan.seq_len, "lr": plan.lr,
              "init": "model" if start_from is not None else "teacher" if plan.from_teacher else "random"}
    staged = ctx.staging_dir("model")
    try:
        save_model_dir(staged, state_dict, plan.s_config, tokenizer_dir=teacher.path,
                       meta=student_meta(teacher.path, start_from, recipe))
        state_dict.clear()
        backend = TorchBackend(staged, context=plan.seq_len, device=plan.device, precision=plan.eval_precision,
                               batch_size=plan.micro, threads=None)
        s_ppl = _perplexity(ctx, backend, staged, corpus.heldout, plan.seq_len, "the student")
        backend.close()
        rows = [Measured(f"teacher {teacher.name}", plan.t_params, model_weights(teacher.path).stat().st_size,
                         cache.perplexity),
                Measured(f"student {name}", plan.s_params, model_weights(staged).stat().st_size, s_ppl)]
        if options.speed:
            ctx.log("exporting teacher and student to Q4_K_M and timing llama.cpp decoding")

            def progress(desc: str, done: int, total: int) -> None:
                ctx.check_cancelled()
                ctx.progress(done, total, unit="step", desc=desc)

            measure_speed([(rows[0], teacher.path), (rows[1], staged)], corpus.heldout, work_dir=ctx.checkpoints_dir,
                          progress=progress)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    metrics = {k: v for k, v in {
        "loss": figures["loss"], "val_loss": figures["val_loss"], "perplexity": s_ppl,
        "teacher_perplexity": cache.perplexity, "params": float(plan.s_params),
        "q4_k_m_tokens_per_s": rows[1].q4_tokens_per_s, "teacher_q4_k_m_tokens_per_s": rows[0].q4_tokens_per_s,
    }.items() if v is not None}
    parents = [teacher.id, plan.data.id] + ([start_from.id] if start_from is not None else [])
    family = read_meta(start_from.path if start_from is not None else teacher.path).get("family", "llama")
    student = ctx.register("model", staged, name=name, parents=parents,
                           metadata={"family": family, "params": plan.s_params, "distill": recipe,
                                     "measured": [m.to_json() for m in rows]}, metrics=metrics)
    freed = cache.size_bytes()
    shutil.rmtree(cache.path, ignore_errors=True)
    ctx.log(f"removed the teacher's top-k logits ({fmt_bytes(freed)}); the student is model {student.id}")
    trained_s, steps = figures["trained_s"], corpus.steps
    table = tradeoff_table(rows, f"Distilling {teacher.name} into {student.name} "
                                 f"(perplexity on {plan.data.name} val)")
    table["rows"].append(["time", f"{cache.seconds:.1f} s (top-k pass)",
                          f"{trained_s:.1f} s for {steps} steps ({steps / trained_s if trained_s else 0:.2f} steps/s)"])
    return {
        "model": student.id, "steps": steps, "loss": figures["loss"], "val_loss": figures["val_loss"],
        "perplexity": s_ppl, "teacher_perplexity": cache.perplexity, "params": plan.s_params,
        "teacher_params": plan.t_params, "train_seconds": round(trained_s, 2),
        "teacher_seconds": round(cache.seconds, 2), "measured": [m.to_json() for m in rows],
        "tables": [table],
    }


def _perplexity(ctx: Context, backend: Any, model_dir: Path, ids: np.ndarray, context: int, name: str) -> float | None:
    from workbench_evaluate.tasks import windows

    context = min(context, backend.context)
    total, done = len(windows(len(ids), context, max(1, context // 2))), 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        ctx.progress(done, total, unit="window", desc=f"held-out perplexity of {name}")

    return heldout_perplexity(backend, model_dir, ids, context, tick, name)


def student_config(spec: str, t_config: Config, start_from: Artifact | None) -> Config:
    """A fresh student's config gets the teacher's vocabulary; a model keeps its own."""
    if start_from is not None:
        return load_config(start_from.path)
    from workbench_pretrain.train import model_config

    return model_config(spec, t_config.vocab_size)


def student_meta(teacher_dir: Path, start_from: Artifact | None, recipe: dict[str, Any]) -> dict[str, Any]:
    """The student speaks as its start model did, or as the teacher does when it is fresh."""
    if start_from is not None:
        meta = read_meta(start_from.path)
    else:
        teacher = read_meta(teacher_dir)
        meta = {"family": "llama", **{k: teacher[k] for k in ("prompt_style", "eos_token") if k in teacher}}
    meta["distill"] = recipe
    return meta


def preset_lr(spec: str) -> float:
    from workbench_pretrain.presets import PRESETS

    return PRESETS[spec].learning_rate if spec in PRESETS else 3e-4
