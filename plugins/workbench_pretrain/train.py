"""The pretraining run, read top to bottom like LitGPT's own: `pretrain` (setup) → `main` → `fit`.

`pretrain` runs in the worker process: it resolves the inputs, fixes the model config and the
schedule, checks memory, and registers the model at the end. Training itself (`main`, `fit`)
runs either right there (one device) or in one spawned process per local device (`launch`),
each driven by Lightning Fabric. Exactly one process speaks for the run: the worker. Spawned
ranks send their reports to it through a queue, and only global rank 0 sends any.
"""

from __future__ import annotations

import math
import os
import queue as queue_mod
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.strategies import FSDPStrategy
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from litgpt import GPT, Config
from litgpt.model import Block
from litgpt.pretrain import initialize_weights
from litgpt.utils import chunked_cross_entropy, reset_parameters
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FullyShardedDataParallel

from workbench.context import Context
from workbench.errors import Cancelled, UserError
from workbench.hardware import (
    MemoryEstimate,
    choose_device,
    choose_precision,
    estimate_training_memory,
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
from workbench.ml.rope import model_class
from workbench.ml.training import (
    Reporter,
    check_fingerprint,
    grad_scaler,
    save_checkpoint,
    warmup_cosine,
)
from workbench.ml.trainstate import load_train_state, restore_rng
from workbench.prompts import get_style
from workbench_pretrain.data import TokenWindows, validation_windows
from workbench_pretrain.presets import PADDING_MULTIPLE, PRESETS, padded_vocab
from workbench_pretrain.stage import Options, batch_plan


@dataclass
class Plan:
    """Everything a training process needs, as plain values (spawned ranks receive a copy)."""

    config: dict[str, Any]
    dataset_dir: str
    tokenizer_dir: str
    init_dir: str | None
    out_dir: str
    checkpoints_dir: str
    resume_from: str | None
    seq_len: int
    batch_size: int
    micro_batch_size: int
    accumulation: int
    steps: int
    warmup_steps: int
    lr: float
    min_lr: float
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    seed: int
    device: str
    precision: str
    devices: int
    num_nodes: int
    strategy: str
    compile: bool
    init: str = "neox"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes from it."""
        return {"config": self.config, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "seed": self.seed, "steps": self.steps}


# ----------------------------------------------------------------------------------------------
# setup: runs in the worker process


def pretrain(options: Options, ctx: Context) -> dict[str, Any]:
    dataset = ctx.artifact(options.dataset, "dataset")
    init = ctx.artifact(options.init_from, "model") if options.init_from else None
    tokenizer = ctx.artifact(options.tokenizer, "tokenizer") if options.tokenizer else None
    tokenizer_dir = init.path if init is not None else tokenizer.path  # type: ignore[union-attr]
    vocab = tokenizer_vocab(tokenizer_dir)

    device = choose_device(options.device)
    precision = options.precision or choose_precision(device, training=True)
    if options.strategy == "fsdp" and device != "cuda":
        raise UserError(f"--strategy fsdp needs CUDA GPUs, but this run trains on {device}; use --strategy ddp")

    model_name = options.model or ("tiny" if init is None else init.name)
    if init is not None:
        config = load_config(init.path)
        if vocab > config.padded_vocab_size:
            raise UserError(
                f"model {init.id} has {config.padded_vocab_size} embedding rows but its tokenizer has "
                f"{vocab} tokens; the model directory {init.path} is inconsistent"
            )
    else:
        config = model_config(model_name, vocab)
    seq_len = options.max_seq_length if options.max_seq_length is not None else config.block_size
    if seq_len > config.block_size:
        if init is not None:
            raise UserError(
                f"--max-seq-length {seq_len} is longer than model {init.id}'s context of "
                f"{config.block_size} tokens; lower --max-seq-length"
            )
        config = Config(**{**config_to_dict(config), "block_size": seq_len})
    preset = PRESETS.get(model_name) if init is None else None
    batch_size, micro_batch_size, accumulation = batch_plan(options, preset)

    n_params = count_parameters(config)
    memory = preflight(
        memory_estimate(config, n_params, micro_batch_size, seq_len, precision, options.devices, options.strategy, device),
        device, force=options.force, what=f"pretraining {model_name} ({n_params:,} parameters)",
    )

    from workbench_data.tokencache import token_array

    def tokenizing(split: str) -> Any:
        return lambda done, total: ctx.progress(done, total, unit="doc", desc=f"tokenizing the {split} split")

    train_tokens = token_array(dataset.path, tokenizer_dir, "train", progress=tokenizing("train"))
    val_tokens = token_array(dataset.path, tokenizer_dir, "val", progress=tokenizing("val"))
    TokenWindows(train_tokens, seq_len, options.seed, what=f"the train split of dataset {dataset.id}")
    if len(val_tokens) < 2:
        ctx.log(f"dataset {dataset.id} has no validation tokens; validation is skipped", "warning")

    # None means the option was not given; any value given (0 included) is the user's.
    max_tokens = _given(options.max_tokens, preset.max_tokens if preset else 20 * n_params)
    steps = _given(options.max_steps, max(1, max_tokens // (batch_size * seq_len)))
    warmup = options.warmup_steps if options.warmup_steps is not None else max(1, round(0.05 * steps))
    lr = _given(options.lr, preset.learning_rate if preset else 3e-4)
    init_scheme = options.init if options.init != "auto" else (preset.init if preset else "neox")
    compile_model = options.compile == "on" or (options.compile == "auto" and compile_pays(device, steps * batch_size * seq_len))
    eos = eos_token(tokenizer_dir)
    parent_meta = read_meta(init.path) if init is not None else {}

    out_dir = ctx.staging_dir("model")
    plan = Plan(
        config=config_to_dict(config), dataset_dir=str(dataset.path), tokenizer_dir=str(tokenizer_dir),
        init_dir=str(init.path) if init is not None else None, out_dir=str(out_dir),
        checkpoints_dir=str(ctx.checkpoints_dir), resume_from=ctx.resume_from, seq_len=seq_len,
        batch_size=batch_size, micro_batch_size=micro_batch_size, accumulation=accumulation,
        steps=steps, warmup_steps=warmup, lr=lr,
        min_lr=options.min_lr if options.min_lr is not None else lr / 10,
        weight_decay=options.weight_decay, betas=(options.beta1, options.beta2),
        grad_clip=options.grad_clip if options.grad_clip is not None else 0.0,
        eval_every=options.eval_every, eval_batches=options.eval_batches,
        checkpoint_every=options.checkpoint_every, seed=options.seed, device=device, precision=precision,
        devices=options.devices, num_nodes=options.num_nodes,
        strategy="auto" if options.devices * options.num_nodes == 1 else options.strategy,
        compile=compile_model, init=init_scheme,
        meta={
            "prompt_style": parent_meta.get("prompt_style") or get_style("chatml", eos_token=eos).to_json(),
            "family": parent_meta.get("family", "llama"),
            "eos_token": parent_meta.get("eos_token", eos),
            **({"init": init_scheme} if init is None else {}),
        },
    )
    ctx.log(
        f"pretraining {model_name}: {n_params:,} parameters, {steps} steps of {batch_size}×{seq_len} tokens "
        f"({steps * plan.tokens_per_step:,} tokens, {accumulation} micro-batches of {micro_batch_size} per "
        f"process and step), {plan.world_size} process(es) on {device}, {precision}, "
        f"compile {'on' if compile_model else 'off'}, "
        f"{'weights of ' + init.id if init is not None else init_scheme + ' init'}, about {memory['estimate_bytes'] / 2**30:.2f} GiB"
    )
    try:
        result = main(plan, ctx) if plan.world_size == 1 else launch(plan, ctx)
        if result is None:  # this node does not host global rank 0: the model is saved elsewhere
            shutil.rmtree(out_dir, ignore_errors=True)
            return {"node_rank": int(os.environ.get("NODE_RANK", 0)), "steps": steps}
        metrics = {k: result[k] for k in ("loss", "val_loss", "val_ppl") if result.get(k) is not None}
        art = ctx.register(
            "model", out_dir, name=options.name or f"pretrain-{Path(model_name).stem}",
            parents=[a.id for a in (dataset, tokenizer, init) if a is not None],
            metadata={
                **plan.meta, "model": model_name, "params": n_params, "max_seq_length": seq_len,
                "trained_tokens": result["steps"] * plan.tokens_per_step, "steps": result["steps"],
                "batch_size": batch_size, "precision": precision, "device": device,
                "devices": options.devices, "num_nodes": options.num_nodes,
            },
            metrics={**metrics, "tokens_per_s": result["tokens_per_s"]},
        )
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return {"model": art.id, "params": n_params, **metrics, "steps": result["steps"],
            "tokens_per_s": round(result["tokens_per_s"], 1)}


def _given(value: Any, default: Any) -> Any:
    """An option's value when it was given (0 included), else the default."""
    return default if value is None else value


#: On a CPU, compiling the tiny preset took ~18 CPU-seconds and then made a step ~20% cheaper, so
#: it paid back after ~250k tokens; from this many tokens on it clearly helps.
CPU_COMPILE_MIN_TOKENS = 1_000_000


def compile_pays(device: str, tokens: int) -> bool:
    """`--compile auto`: always on CUDA; on a CPU only for runs long enough to win back the
    compile time; never on MPS, where inductor support is young."""
    return device == "cuda" or (device == "cpu" and tokens >= CPU_COMPILE_MIN_TOKENS)


def tokenizer_vocab(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.exists():
        raise UserError(f"{tokenizer_dir} has no tokenizer.json; pretraining reads Hugging Face tokenizers")
    return int(Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True))


def eos_token(tokenizer_dir: Path) -> str:
    import json

    path = tokenizer_dir / "tokenizer_config.json"
    eos = json.loads(path.read_text()).get("eos_token") if path.exists() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) else "<|endoftext|>"


def model_config(spec: str, vocab_size: int) -> Config:
    """A preset, a LitGPT config name or a YAML file of Config fields, sized to the tokenizer."""
    vocab = {"vocab_size": vocab_size, "padding_multiple": PADDING_MULTIPLE,
             "padded_vocab_size": padded_vocab(vocab_size)}
    if spec in PRESETS:
        return Config(**PRESETS[spec].config(vocab_size))
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read model config {path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise UserError(f"model config {where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        data = data.get("model_config", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise UserError(f"model config {path} must be a mapping of litgpt.Config fields")
        unknown = sorted(set(data) - set(Config.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"model config {path} has fields litgpt.Config does not know: {', '.join(unknown)}; "
                "see `litgpt pretrain --help` for the model_config fields"
            )
        try:
            return Config(**{"name": path.stem, **data, **vocab})
        except Exception as exc:
            raise UserError(f"model config {path} is not a valid LitGPT config: {exc}") from None
    try:
        return Config.from_name(spec, **vocab)
    except ValueError:
        raise UserError(
            f"unknown model '{spec}': not a preset ({', '.join(PRESETS)}), a LitGPT config name "
            "(`litgpt pretrain list` shows them) or a .yaml file"
        ) from None


def count_parameters(config: Config) -> int:
    with torch.device("meta"):
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())


def memory_estimate(
    config: Config, n_params: int, micro_batch_size: int, seq_len: int, precision: str,
    devices: int, strategy: str, device: str,
) -> MemoryEstimate:
    """Per device; FSDP shards the states across processes, CPU processes share one memory."""
    est = estimate_training_memory(
        n_params=n_params, trainable_params=n_params, batch_size=micro_batch_size, seq_len=seq_len,
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
        vocab_size=config.padded_vocab_size, precision=precision, **mlp_shape(config),
    )
    if strategy == "fsdp" and devices > 1:
        est = MemoryEstimate(est.weights // devices, est.gradients // devices, est.optimizer // devices, est.activations)
    if device == "cpu" and devices > 1:
        est = MemoryEstimate(est.weights * devices, est.gradients * devices, est.optimizer * devices,
                             est.activations * devices)
    return est


# ----------------------------------------------------------------------------------------------
# several processes: the worker spawns one rank per local device and relays what rank 0 reports


def launch(plan: Plan, ctx: Context) -> dict[str, Any] | None:
    """Spawn `plan.devices` ranks (fresh interpreters, not re-runs of the worker's argv).

    Each rank sets LOCAL_RANK itself, so Fabric treats the processes as launched externally and
    only joins them into one process group (MASTER_ADDR, MASTER_PORT and NODE_RANK come from
    the environment, see docs/pretrain.md). The worker keeps the only `ctx`: it forwards what
    rank 0 sends, and it tells the ranks to stop when the run is cancelled.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if plan.num_nodes > 1:
            raise UserError("a run across nodes needs MASTER_ADDR and MASTER_PORT set on every node (docs/pretrain.md)")
        os.environ["MASTER_PORT"] = str(free_port())
    spawn = mp.get_context("spawn")
    messages, stop = spawn.Queue(), spawn.Event()
    procs = mp.start_processes(_rank_entry, args=(plan, messages, stop), nprocs=plan.devices,
                               join=False, start_method="spawn")
    outcome: dict[str, Any] = {}
    try:
        while True:
            _relay(messages, ctx, outcome)
            if ctx.cancel_requested:
                stop.set()
            if procs.join(timeout=0.2):
                break
    except ProcessException as exc:
        _relay(messages, ctx, outcome)
        if "user_error" in outcome:
            raise UserError(outcome["user_error"]) from None
        raise RuntimeError(f"a training process failed: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        for proc in procs.processes:
            if proc.is_alive():
                proc.terminate()
    _relay(messages, ctx, outcome)
    if outcome.get("cancelled"):
        raise Cancelled()
    return outcome.get("result")


def _relay(messages: Any, ctx: Context, outcome: dict[str, Any]) -> None:
    while True:
        try:
            kind, args, kwargs = messages.get_nowait()
        except queue_mod.Empty:
            return
        if kind in ("progress", "metric", "log", "checkpoint"):
            getattr(ctx, kind)(*args, **kwargs)
        else:
            outcome[kind] = args[0] if args else True


def _rank_entry(local_rank: int, plan: Plan, messages: Any, stop: Any) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop, for all ranks
    os.environ["LOCAL_RANK"] = str(local_rank)
    if plan.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.devices))
    reporter = QueueReporter(messages, stop)
    try:
        result = main(plan, reporter)
    except Cancelled:
        messages.put(("cancelled", (), {}))
        return
    except UserError as exc:
        messages.put(("user_error", (str(exc),), {}))
        raise
    if result is not None:
        messages.put(("result", (result,), {}))


class QueueReporter:
    """A spawned rank's reports, sent to the worker's `ctx` through a queue."""

    def __init__(self, messages: Any, stop: Any):
        self.messages, self.stop = messages, stop

    @property
    def cancel_requested(self) -> bool:
        return bool(self.stop.is_set())

    def progress(self, step: int, total: int | None = None, *, unit: str = "step", desc: str | None = None) -> None:
        self.messages.put(("progress", (step, total), {"unit": unit, "desc": desc}))

    def metric(self, step: int | None = None, **values: float) -> None:
        self.messages.put(("metric", (step,), values))

    def log(self, message: str, level: str = "info") -> None:
        self.messages.put(("log", (message, level), {}))

    def checkpoint(self, path: Path, step: int) -> None:
        self.messages.put(("checkpoint", (path, step), {}))


class Quiet:
    """Ranks other than 0 keep their reports to themselves; they only hear about cancelling."""

    def __init__(self, inner: Reporter):
        self.inner = inner

    @property
    def cancel_requested(self) -> bool:
        return self.inner.cancel_requested

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass

    metric = log = checkpoint = progress


def initialize(fabric: L.Fabric, model: GPT, scheme: str) -> None:
    """Give the freshly built (uninitialised) model its starting weights; a checkpoint loaded
    afterwards replaces them."""
    config = model.config
    if scheme == "neox":
        initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    elif scheme == "torch":
        if not isinstance(fabric.strategy, FSDPStrategy):  # FSDP calls them itself as it shards
            reset_parameters(model)
    else:
        raise ValueError(f"unknown initialisation {scheme!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# main: one training process


def main(plan: Plan, reporter: Reporter) -> dict[str, Any] | None:
    """Train; return the result on global rank 0 (None on the other ranks)."""
    fabric = L.Fabric(accelerator=plan.device, devices=plan.devices, num_nodes=plan.num_nodes,
                      strategy=fabric_strategy(plan), precision=plan.precision)  # type: ignore[arg-type]
    fabric.launch()
    if fabric.global_rank != 0:
        reporter = Quiet(reporter)
    fabric.seed_everything(plan.seed, verbose=False)  # the same initial weights on every rank

    config = Config(**plan.config)
    with fabric.init_module(empty_init=True):
        model = model_class(config)(config)  # LongRoPE and YaRN checkpoints keep their own RoPE
    initialize(fabric, model, plan.init)
    model.max_seq_length = plan.seq_len
    flops_per_step = training_flops(config, plan.micro_batch_size, plan.seq_len) * plan.accumulation * fabric.world_size
    if plan.compile:
        model = torch.compile(model)
    model = fabric.setup(model)
    # Fused on a CPU too: one kernel for all parameters instead of a dozen small operations per
    # tensor: on the tiny preset one update took 8 ms instead of 42 (one thread).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay, betas=plan.betas,
        fused=plan.device in ("cuda", "cpu"),
    )
    optimizer = fabric.setup_optimizers(optimizer)
    scheduler = warmup_cosine(optimizer, warmup=plan.warmup_steps, total=plan.steps,
                              floor=plan.min_lr / plan.lr if plan.lr else 1.0)
    # Rank 0's checkpoint decides for every node (the others' runs may not have recorded one);
    # it must be readable on every node, e.g. a workspace on a shared filesystem.
    resume_from = fabric.broadcast(plan.resume_from, src=0) if fabric.world_size > 1 else plan.resume_from
    if plan.init_dir and not resume_from:
        set_model_state_dict(core_module(model), load_state_dict(Path(plan.init_dir)),
                             options=StateDictOptions(full_state_dict=True))

    from workbench_data.tokencache import token_array

    train_data = TokenWindows(token_array(Path(plan.dataset_dir), Path(plan.tokenizer_dir), "train"),
                              plan.seq_len, plan.seed)
    val_rows = validation_windows(token_array(Path(plan.dataset_dir), Path(plan.tokenizer_dir), "val"),
                                  plan.seq_len, plan.eval_batches * plan.micro_batch_size * fabric.world_size)
    val_rows = val_rows[fabric.global_rank :: fabric.world_size]

    step = 0
    if resume_from:
        step = restore(fabric, plan, Path(resume_from), model, optimizer, scheduler)
        reporter.log(f"resumed at step {step} of {plan.steps} from {resume_from}")

    result = fit(fabric, plan, model, optimizer, scheduler, train_data, val_rows, step, reporter, flops_per_step)

    model_state = get_model_state_dict(core_module(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if fabric.global_rank != 0:
        return None
    save_model_dir(Path(plan.out_dir), model_state, config, tokenizer_dir=Path(plan.tokenizer_dir), meta=plan.meta)
    return result


def fabric_strategy(plan: Plan) -> Any:
    if plan.world_size == 1:
        return "auto"
    if plan.strategy == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full",
                            sharding_strategy="HYBRID_SHARD" if plan.num_nodes > 1 else "FULL_SHARD")
    return "ddp"


def core_module(model: Any) -> torch.nn.Module:
    """The module whose parameter names are the checkpoint's: FSDP's root, else the plain GPT."""
    inner = getattr(model._forward_module, "_orig_mod", model._forward_module)
    return inner if isinstance(inner, FullyShardedDataParallel) else model.module


def training_flops(config: Config, micro_batch_size: int, seq_len: int) -> int:
    """FLOPs of one micro-batch's forward and backward pass, counted on a meta-device model
    (the count LitGPT's pretraining reports as "Measured TFLOPs")."""
    with torch.device("meta"):
        meta_model = GPT(config)
        meta_model.max_seq_length = seq_len
        x = torch.randint(0, 1, (micro_batch_size, seq_len))
        return int(measure_flops(meta_model, lambda: meta_model(x),
                                 lambda y: chunked_cross_entropy(y, x, chunk_size=0)))


def peak_flops(fabric: L.Fabric, precision: str) -> float | None:
    """The devices' theoretical FLOP/s, where Lightning knows the chip (CUDA); None elsewhere."""
    if fabric.device.type != "cuda":
        return None
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
    flops = get_available_flops(fabric.device, dtype)
    return float(flops) * fabric.world_size if flops else None


# ----------------------------------------------------------------------------------------------
# fit


def fit(
    fabric: L.Fabric, plan: Plan, model: Any, optimizer: Any, scheduler: Any, train_data: TokenWindows,
    val_rows: torch.Tensor, step: int, reporter: Reporter, flops_per_step: int,
) -> dict[str, Any]:
    world, rank = fabric.world_size, fabric.global_rank
    peak = peak_flops(fabric, plan.precision)
    val_loss = None
    if step == 0:
        val_loss = validate(fabric, model, val_rows, plan.micro_batch_size)
        if val_loss is not None:
            reporter.metric(0, val_loss=val_loss, val_ppl=math.exp(val_loss))
    loss_value = float("nan")
    saved_at, trained_s, start_step = step, 0.0, step
    t_last = time.perf_counter()
    while step < plan.steps:
        step_loss = torch.zeros((), device=fabric.device)
        for micro in range(plan.accumulation):
            # Sequence positions follow from the step alone, so a resumed run reads the same data.
            first = step * plan.batch_size + (micro * world + rank) * plan.micro_batch_size
            batch = fabric.to_device(train_data.batch(first, plan.micro_batch_size))
            inputs, targets = batch[:, :-1], batch[:, 1:]
            with fabric.no_backward_sync(model, enabled=micro < plan.accumulation - 1):
                loss = chunked_cross_entropy(model(inputs), targets)
                fabric.backward(loss / plan.accumulation)
            step_loss += loss.detach()
        if plan.grad_clip > 0:
            fabric.clip_gradients(model, optimizer, max_norm=plan.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1

        step_loss /= plan.accumulation
        if world > 1:
            step_loss = fabric.all_reduce(step_loss, reduce_op="mean")
        loss_value = float(step_loss.item())  # also waits for the device, so the timing is true
        now = time.perf_counter()
        seconds, t_last = now - t_last, now
        trained_s += seconds
        values = {"loss": loss_value, "lr": lr, "tokens_per_s": plan.tokens_per_step / seconds}
        if peak:
            values["mfu"] = flops_per_step / seconds / peak
        reporter.metric(step, **values)
        reporter.progress(step, plan.steps, unit="step", desc="pretraining")

        if step % plan.eval_every == 0 or step == plan.steps:
            val_loss = validate(fabric, model, val_rows, plan.micro_batch_size)
            if val_loss is not None:
                reporter.metric(step, val_loss=val_loss, val_ppl=math.exp(val_loss))
        # A cancel that arrives with the last step done changes nothing: the run just finishes.
        cancel = agreed(fabric, reporter.cancel_requested) and step < plan.steps
        if (cancel or step % plan.checkpoint_every == 0) and step < plan.steps and step != saved_at:
            save(fabric, plan, model, optimizer, scheduler, step, reporter)
            saved_at = step
        if cancel:
            raise Cancelled()
        t_last = time.perf_counter()  # validation and checkpoints are not training time

    trained_steps = step - start_step
    return {
        "steps": step, "loss": loss_value, "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if val_loss is not None else None,
        "tokens_per_s": trained_steps * plan.tokens_per_step / trained_s if trained_s else 0.0,
    }


@torch.no_grad()
def validate(fabric: L.Fabric, model: Any, rows: torch.Tensor, micro_batch_size: int) -> float | None:
    """Mean next-token loss over the fixed validation windows, across all ranks."""
    model.eval()
    totals = torch.zeros(2, device=fabric.device, dtype=torch.float64)  # loss sum, windows
    for chunk in rows.split(micro_batch_size):
        chunk = fabric.to_device(chunk)
        loss = chunked_cross_entropy(model(chunk[:, :-1]), chunk[:, 1:])
        totals[0] += loss.double() * chunk.size(0)
        totals[1] += chunk.size(0)
    if fabric.world_size > 1:
        totals = fabric.all_reduce(totals, reduce_op="sum")
    model.train()
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


def agreed(fabric: L.Fabric, flag: bool) -> bool:
    """True on every rank if any rank saw a cancel request, so they all stop at the same step."""
    if fabric.world_size == 1:
        return flag
    votes = fabric.all_reduce(torch.tensor([float(flag)], device=fabric.device), reduce_op="sum")
    return bool(votes.item() > 0)


# ----------------------------------------------------------------------------------------------
# checkpoints


class _Gathered:
    """An optimizer state gathered to full, parameter-named tensors (FSDP shards it otherwise)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def save(fabric: L.Fabric, plan: Plan, model: Any, optimizer: Any, scheduler: Any, step: int, reporter: Reporter) -> None:
    """Every rank takes part in gathering the states; rank 0 writes them, atomically."""
    model_state, optim_state = get_state_dict(
        core_module(model), optimizer.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if fabric.global_rank == 0:
        save_checkpoint(
            reporter, Path(plan.checkpoints_dir), step, model_state=model_state, optimizer=_Gathered(optim_state),
            scheduler=scheduler, scaler=grad_scaler(fabric), position=step * plan.batch_size, seed=plan.seed,
            extra={"fingerprint": plan.fingerprint()},
        )
    fabric.barrier()


def restore(fabric: L.Fabric, plan: Plan, path: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    state = load_train_state(path)
    check_fingerprint(state, plan.fingerprint(), path)
    set_state_dict(core_module(model), optimizer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    scaler = grad_scaler(fabric)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    return int(state["step"])

