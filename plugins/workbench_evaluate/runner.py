"""`workbench eval` from start to end: read the inputs once, measure each model in turn, judge,
then write the report and merge each model's figures into its artifact.

Models are loaded one at a time, so a comparison needs the memory of its largest model only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.context import Context
from workbench.errors import Cancelled
from workbench.hardware import choose_device
from workbench.ml.checkpoint import load_config, load_tokenizer
from workbench.prompts import PromptStyle, get_style, style_for_model
from workbench_evaluate import bias, tasks
from workbench_evaluate.backends import (
    DEFAULT_CONTEXT,
    LlamaBackend,
    LlamaTokenizer,
    TorchBackend,
    gguf_metadata,
)
from workbench_evaluate.biasfile import BiasPair, read_bias_pairs
from workbench_evaluate.mcfile import Question, read_questions
from workbench_evaluate.plan import Plan, Target, gguf_file, make_plan, task_limits
from workbench_evaluate.report import (
    column_names,
    comparison_table,
    judge_table,
    register,
    samples_table,
    subjects_table,
)
from workbench_evaluate.rows import read_instructions, read_pairs, read_texts
from workbench_evaluate.tradeoff import footprint

SEED = 0


class Work:
    """One progress bar over every example of every model, and the cancel check."""

    def __init__(self, ctx: Context, total: int):
        self.ctx, self.total, self.done, self.desc = ctx, total, 0, ""
        self.estimates: dict[str, int] = {}

    def stage(self, desc: str) -> None:
        self.desc = desc
        self.ctx.progress(self.done, self.total, unit="example", desc=desc)

    def tick(self, n: int = 1) -> None:
        if self.ctx.cancel_requested:
            raise Cancelled()  # nothing half-written: the report is registered only at the end
        self.done += n
        self.ctx.progress(min(self.done, self.total), self.total, unit="example", desc=self.desc)


def _context(target: Target, option: int | None) -> int:
    """The window a model is scored with, known without loading its weights."""
    if target.gguf_path is not None:
        meta = gguf_metadata(target.gguf_path)
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", DEFAULT_CONTEXT))
    else:
        assert target.model_dir is not None
        trained = load_config(target.model_dir).block_size
    return min(trained, option or DEFAULT_CONTEXT)


def _gguf_style(meta: dict[str, str], eos_text: str, path: Path) -> PromptStyle | None:
    template = meta.get("tokenizer.chat_template")
    if not template:
        return None
    stop = [s for s in meta.get("workbench.stop", "").split("\n") if s]
    return PromptStyle(meta.get("workbench.prompt_style") or "gguf", template, stop, eos_token=eos_text,
                       origin=f"model {path.name} (tokenizer.chat_template of {path})").check()


def load_subject(target: Target, options: Any) -> tasks.Subject:
    notes: list[str] = []
    style: PromptStyle | None
    if target.gguf_path is not None:
        backend: Any = LlamaBackend(target.gguf_path, context=options.context, device=_device(options),
                                    threads=options.threads)
        if target.model_dir is not None:
            tokenizer: Any = load_tokenizer(target.model_dir)
        else:
            tokenizer = LlamaTokenizer(target.gguf_path, backend.metadata)
            notes.append("its checkpoint is not in the workspace, so llama.cpp's tokenizer is used: "
                         "its perplexity is not on the same token ids as the checkpoints'")
        eos = backend.llm.detokenize([backend.llm.token_eos()], special=True).decode("utf-8", "replace")
        style = _gguf_style(backend.metadata, eos, target.gguf_path) or (style_for_model(target.model_dir) if target.model_dir else None)
    else:
        assert target.model_dir is not None
        backend = TorchBackend(target.model_dir, context=options.context, device=options.device,
                               precision=options.precision, batch_size=options.batch_size, threads=options.threads)
        tokenizer = load_tokenizer(target.model_dir)
        style = style_for_model(target.model_dir)
    if style is None:
        style = get_style("chatml")
        notes.append("it stores no prompt style or chat template; prompts use ChatML")
    stop_ids = {int(tokenizer.eos_id)} if tokenizer.eos_id is not None else set()
    strings = []
    for stop in style.stop:
        ids = [int(i) for i in tokenizer.encode(stop, bos=False).tolist()]
        if len(ids) == 1 and tokenizer.decode(torch.tensor(ids)) == "":
            stop_ids.add(ids[0])  # a special token: stop on its id, it never shows in decoded text
        else:
            strings.append(stop)
    return tasks.Subject(target.id, target.name, backend, tokenizer, style, stop_ids, strings, notes)


def _device(options: Any) -> str:
    return choose_device(options.device)


def _close(subject: tasks.Subject) -> None:
    subject.backend.close()
    if isinstance(subject.tokenizer, LlamaTokenizer):
        subject.tokenizer.close()


class Inputs:
    """Everything read from disk once and shared by all models."""

    def __init__(self, plan: Plan, options: Any):
        limit = task_limits(options)
        self.questions: list[Question] = []
        self.instructions: list[Any] = []
        self.pairs: list[Any] = []
        self.texts: list[str] = []
        self.bias_pairs: list[BiasPair] = []
        if "mc" in plan.tasks and plan.mc_path is not None:
            self.questions = read_questions(plan.mc_path)[: limit["mc"]]
        if "bias" in plan.tasks and plan.bias_path is not None:
            self.bias_pairs = read_bias_pairs(plan.bias_path, limit["bias"])
        if {"generation", "judge"} & set(plan.tasks):
            # the judge scores the generated answers, so generation's limit decides when both run
            answered = limit["generation"] if "generation" in plan.tasks else limit["judge"]
            self.instructions = read_instructions(plan.data["instruction"].path / "val.jsonl", answered)
        if "preference" in plan.tasks:
            self.pairs = read_pairs(plan.data["preference"].path / "val.jsonl", limit["preference"])
        if "perplexity" in plan.tasks:
            self.texts = read_texts(plan.data["pretrain"].path / "val.jsonl", limit["perplexity"])
        self.documents = limit["perplexity"]
        self.streams: dict[Path, np.ndarray] = {}

    def stream(self, plan: Plan, target: Target, options: Any, ctx: Context) -> np.ndarray | None:
        """The held-out token ids for a target with a checkpoint tokenizer (shared per tokenizer)."""
        if target.model_dir is None:
            return None
        key = target.model_dir / "tokenizer.json"
        if key not in self.streams:
            dataset = plan.data["pretrain"].path

            def built(done: int, total: int) -> None:
                ctx.progress(done, total, unit="document", desc="tokenizing the held-out text")

            self.streams[key] = tasks.token_stream(dataset, target.model_dir, self.documents, progress=built)
        return self.streams[key]


def evaluate(options: Any, ctx: Context) -> dict[str, Any]:
    torch.manual_seed(SEED)
    plan = make_plan(ctx.store, options)
    for note in plan.notes:
        ctx.log(note, "warning")
    inputs = Inputs(plan, options)
    contexts = {t.id: _context(t, options.context) for t in plan.targets}
    stride_of = {tid: min(options.stride if options.stride is not None else max(1, c // 2), c) for tid, c in contexts.items()}
    windows: dict[str, int] = {}
    if "perplexity" in plan.tasks:
        for t in plan.targets:
            ids = inputs.stream(plan, t, options, ctx)
            # A GGUF tokenized by llama.cpp is counted after loading; a byte per token bounds it.
            n = len(ids) if ids is not None else tasks.bytes_of(inputs.texts)
            windows[t.id] = len(tasks.windows(n, contexts[t.id], stride_of[t.id]))
    per_model = len(inputs.questions) + len(inputs.pairs) + len(inputs.bias_pairs)
    per_model += len(inputs.instructions) if {"generation", "judge"} & set(plan.tasks) else 0
    judge_calls = len(inputs.instructions) * (len(plan.targets) - 1) if "judge" in plan.tasks else 0
    work = Work(ctx, sum(windows.values()) + per_model * len(plan.targets) + judge_calls)
    work.estimates = windows
    ctx.log(f"evaluating {len(plan.targets)} model(s) on {', '.join(plan.tasks)}"
            + "".join(f"; {k} data: {a.name} ({a.id})" for k, a in plan.data.items()))

    metrics: dict[str, dict[str, float]] = {t.id: {} for t in plan.targets}
    details: dict[str, dict[str, Any]] = {t.id: {} for t in plan.targets}
    answers: dict[str, list[str]] = {}
    for index, target in enumerate(plan.targets):
        work.stage(f"{target.name}: loading ({target.backend})")
        subject = load_subject(target, options)
        for note in subject.notes:
            ctx.log(f"{target.name}: {note}", "warning")
        details[target.id]["backend"] = target.backend
        try:
            for task in plan.tasks:
                if task == "judge":
                    continue
                work.stage(f"{target.name}: {task}")
                t0 = time.perf_counter()
                result = _run_task(task, subject, target, plan, inputs, options, ctx, work,
                                   contexts[target.id], stride_of[target.id], answers)
                seconds = time.perf_counter() - t0
                metrics[target.id].update(result.metrics)
                details[target.id][task] = result.details
                ctx.metric(index, **result.metrics)
                rate = ""
                if task == "perplexity" and seconds > 0:
                    rate = f" ({result.details['tokens_scored'] / seconds:,.0f} tokens/s)"
                ctx.log(f"{target.name} [{target.backend}] {task}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()) + rate)
            if "judge" in plan.tasks and target.id not in answers:
                work.stage(f"{target.name}: answering for the judge")
                answers[target.id] = tasks.generation(subject, inputs.instructions, options.max_new_tokens,
                                                      work.tick)[1]
        finally:
            _close(subject)

    judge_report = _judge(plan, inputs, options, work, answers, metrics, ctx) if "judge" in plan.tasks else None
    return _finish(plan, options, ctx, metrics, details, judge_report, inputs.bias_pairs)


def _run_task(task: str, subject: tasks.Subject, target: Target, plan: Plan, inputs: Inputs, options: Any,
              ctx: Context, work: Work, context: int, stride: int, answers: dict[str, list[str]]) -> tasks.Result:
    if task == "perplexity":
        ids = inputs.stream(plan, target, options, ctx)
        if ids is None:
            ids = tasks.stream_from_texts(subject, inputs.texts)
            # The estimate made before llama.cpp tokenized the text becomes the real count.
            work.total += len(tasks.windows(len(ids), context, stride)) - work.estimates.get(target.id, 0)
        return tasks.perplexity(subject, ids, tasks.bytes_of(inputs.texts), context, stride, work.tick,
                                batch=options.batch_size)
    if task == "mc":
        return tasks.multiple_choice(subject, inputs.questions, options.mc_format, work.tick)
    if task == "generation":
        result, predictions = tasks.generation(subject, inputs.instructions, options.max_new_tokens, work.tick)
        answers[target.id] = predictions
        return result
    if task == "preference":
        return tasks.preference(subject, inputs.pairs, work.tick)
    if task == "bias":
        scores = bias.score_pairs(subject, inputs.bias_pairs, work.tick)
        summary = bias.summarize(inputs.bias_pairs, scores)
        return tasks.Result(bias.headline(summary), {"n": len(inputs.bias_pairs), "attributes": summary,
                                                     "scores": scores})
    raise ValueError(task)


def _judge(plan: Plan, inputs: Inputs, options: Any, work: Work, answers: dict[str, list[str]],
           metrics: dict[str, dict[str, float]], ctx: Context) -> dict[str, Any]:
    from workbench_evaluate.judge import Judge, compare

    assert plan.judge is not None
    baseline = plan.targets[0]
    work.stage(f"judging against {baseline.name} with {plan.judge.name}")
    judge = Judge(gguf_file(plan.judge), device=_device(options), threads=options.threads)
    try:
        others = {t.id: answers[t.id] for t in plan.targets[1:]}
        prompts = [row.prompt for row in inputs.instructions]
        results = compare(judge, prompts, answers[baseline.id], others, work.tick)
    finally:
        judge.close()
    order = {t.id: i for i, t in enumerate(plan.targets)}
    for mid, comparison in results.items():
        metrics[mid]["judge_win_rate"] = comparison.win_rate
        ctx.metric(order[mid], judge_win_rate=comparison.win_rate)
        ctx.log(f"judge: {mid} wins {comparison.win_rate:.1%} against {baseline.id}")
    return {"judge": plan.judge.id, "judge_name": plan.judge.name, "baseline": baseline.id,
            "results": {mid: c.to_json() for mid, c in results.items()}}


def _finish(plan: Plan, options: Any, ctx: Context, metrics: dict[str, dict[str, float]],
            details: dict[str, dict[str, Any]], judge_report: dict[str, Any] | None,
            bias_pairs: list[BiasPair]) -> dict[str, Any]:
    models = [(t.id, t.name) for t in plan.targets]
    clean = {mid: {k: v for k, v in m.items() if math.isfinite(v)} for mid, m in metrics.items()}
    title = "Evaluation" + (f" on {', '.join(plan.tasks)}" if plan.tasks else "")
    footprints = {t.id: footprint(t.model_dir if t.gguf_path is None else None, t.gguf_path) for t in plan.targets}
    main = comparison_table(models, clean, title, footprints)
    tables = [main] if main["rows"] else []  # bias alone has only its own tables
    for extra in (subjects_table(models, details), samples_table(models, details)):
        if extra is not None:
            tables.append(extra)
    if "bias" in plan.tasks:
        tables += _bias_tables(bias_pairs, models, details)
    if judge_report is not None:
        tables.append(judge_table(models, judge_report))
    data = {kind: {"id": a.id, "name": a.name} for kind, a in plan.data.items()}
    settings = {"limit": options.limit, "limits": task_limits(options), "context": options.context, "stride": options.stride,
                "mc_format": options.mc_format, "max_new_tokens": options.max_new_tokens,
                "mc": str(plan.mc_path) if plan.mc_path and "mc" in plan.tasks else None,
                "bias_pairs": str(plan.bias_path) if plan.bias_path and "bias" in plan.tasks else None}
    report = {
        "models": [{"id": t.id, "name": t.name, "kind": t.art.kind, "backend": t.backend} for t in plan.targets],
        "tasks": plan.tasks, "data": data, "settings": settings, "metrics": clean, "details": details,
        "judge": judge_report,
        "footprint": {mid: {"params": p, "size_bytes": b} for mid, (p, b) in footprints.items()},
    }
    header = ["# Evaluation report", "", "- models: " + ", ".join(f"{n} (`{m}`)" for m, n in models)]
    header += [f"- {kind} data: {d['name']} (`{d['id']}`)" for kind, d in data.items()]
    name = options.name or ("eval-" + "-vs-".join(n for _, n in models))[:120]
    art = register(ctx, name=name, models=models, metrics=clean, tables=tables, report=report, header=header,
                   extra_metadata={"tasks": plan.tasks, "data": data, "settings": settings,
                                   "judge": {k: v for k, v in (judge_report or {}).items() if k != "results"}})
    for mid, values in clean.items():
        ctx.store.update_artifact(mid, metrics=values)
    ctx.log(f"report {art.id}: {art.path / 'report.md'}")
    return {"tables": tables, "metrics": clean, "report": art.id}


def _bias_tables(pairs: list[BiasPair], models: list[tuple[str, str]],
                 details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The bias tables; each model after the first also gets its gap changes against the first."""
    base = details[models[0][0]]["bias"]
    changes = {}
    for mid, _ in models[1:]:
        changes[mid] = bias.change(pairs, base["scores"], details[mid]["bias"]["scores"])
        details[mid]["bias"]["change"] = {"baseline": models[0][0], "attributes": changes[mid]}
    summaries = {mid: details[mid]["bias"]["attributes"] for mid, _ in models}
    return bias.tables(models, column_names(models), summaries, changes)
