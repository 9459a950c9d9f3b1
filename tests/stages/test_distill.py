"""`workbench distill`: real LitGPT teacher and students on a structured synthetic language.

The language is made so that soft targets carry information: each sentence is drawn from a small
grammar whose next word is a choice among several equally likely ones. A teacher pretrained on
plenty of it learns those choices; a student given only a few sentences of it learns more from the
teacher's distribution over the choices than from the one word each sentence happened to draw.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import make_tiny_model, make_tokenizer, run_cli, tiny_llama_config, wait_for
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.events import read_events
from workbench.store import Store
from workbench.testing import run_inline

#: The student: smaller than the teacher, as a user's YAML config of litgpt.Config fields.
STUDENT_CONFIG = """\
n_layer: 1
n_embd: 32
n_head: 2
n_query_groups: 1
intermediate_size: 64
block_size: 32
rotary_percentage: 1.0
parallel_residual: false
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
"""
TEACHER_CONFIG = STUDENT_CONFIG.replace("n_layer: 1", "n_layer: 2").replace("n_embd: 32", "n_embd: 64").replace(
    "intermediate_size: 64", "intermediate_size: 128").replace("n_head: 2", "n_head: 4").replace(
    "n_query_groups: 1", "n_query_groups: 2")

#: A student the teacher's weights fit: the teacher's shape with one block fewer and half its MLP.
NARROW_CONFIG = TEACHER_CONFIG.replace("n_layer: 2", "n_layer: 1").replace("intermediate_size: 128",
                                                                          "intermediate_size: 64")

ANIMALS = {"cat": "meows purrs sleeps hides", "dog": "barks runs digs sleeps", "bird": "sings flies nests hops",
           "fish": "swims hides dives floats", "cow": "moos grazes sleeps walks"}
COLORS = ["red", "green", "blue", "brown", "white", "black"]
PLACES = ["garden", "house", "field", "river", "hill", "barn"]
TIMES = ["today", "daily", "often", "again"]


def sentence(rng: random.Random) -> str:
    animal = rng.choice(sorted(ANIMALS))
    verb = rng.choice(ANIMALS[animal].split())
    return f"the {rng.choice(COLORS)} {animal} {verb} in the {rng.choice(PLACES)} {rng.choice(TIMES)}."


def documents(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(4)) for _ in range(n)]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One torch thread here and in workers: the machine's cores are shared with other tests."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def register_dataset(train: list[str], val: list[str], name: str) -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": "pretrain", "counts": {"train": len(train), "val": len(val)}}))
    for split, docs in (("train", train), ("val", val)):
        (staged / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return ctx.register("dataset", staged, name=name).id


def register_model(model_dir: Path, name: str) -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model_dir, staged)
    return ctx.register("model", staged, name=name, metadata={"family": "llama"}).id


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher pretrained by the pretrain stage on plenty of the language (once per module)."""
    import torch

    base = tmp_path_factory.mktemp("teacher")
    (base / "teacher.yaml").write_text(TEACHER_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(base / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        ctx = Context(Store())
        staged = ctx.staging_dir("tokenizer")
        make_tokenizer(staged, vocab_size=300, text=" ".join(documents(200, seed=99)))
        tokenizer = ctx.register("tokenizer", staged, name="bpe").id
        data = register_dataset(documents(600, seed=1), documents(40, seed=2), "plenty")
        run = run_inline("pretrain", {"dataset": data, "tokenizer": tokenizer, "model": str(base / "teacher.yaml"),
                                      "max_seq_length": 32, "batch_size": 16, "lr": 1e-2,
                                      "max_steps": 120, "eval_every": 120, "eval_batches": 2})
        torch.set_num_threads(threads)
        out = base / "model"
        shutil.copytree(Store().find_artifact(run.result["model"]).path, out)
    return out


def random_student(teacher_dir: Path, out: Path) -> Path:
    """A model directory with random weights of the student's size and the teacher's tokenizer."""
    import torch
    from litgpt import GPT

    from workbench.ml.checkpoint import load_config, read_meta, save_model_dir

    config = tiny_llama_config(load_config(teacher_dir).vocab_size, n_layer=1, n_embd=32, n_head=2,
                               n_query_groups=1, intermediate_size=64, block_size=32)
    torch.manual_seed(5)
    return save_model_dir(out, GPT(config).state_dict(), config, tokenizer_dir=teacher_dir, meta=read_meta(teacher_dir))


@pytest.fixture
def inputs(teacher_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The teacher, a small distillation set with the held-out text, and the student's config."""
    (tmp_path / "student.yaml").write_text(STUDENT_CONFIG)
    return {"teacher": register_model(teacher_dir, "teacher"),
            "dataset": register_dataset(documents(12, seed=3), documents(40, seed=2), "few"),
            "student": str(tmp_path / "student.yaml")}


def options(inputs: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {**inputs, "max_steps": 150, "batch_size": 4, "lr": 1e-2, "top_k": 16, "temperature": 2.0,
            "kd_weight": 0.9, "eval_every": 50, **overrides}


def cli_flags(options: dict[str, Any]) -> list[str]:
    flags = [options["teacher"], options["dataset"]]
    for key, value in options.items():
        if key not in ("teacher", "dataset"):
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def losses(run_dir: Path, name: str = "loss") -> dict[int, float]:
    return {e["step"]: e["values"][name] for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "metric" and name in e["values"]}


# ----------------------------------------------------------------------------------------------


def test_stage_module_imports_nothing_heavy() -> None:
    code = ("import sys, workbench_distill.stage; "
            "print([m for m in ('torch', 'litgpt', 'llama_cpp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("k", [None, 5])
def test_loss_is_hintons_kd_with_full_vocabulary_and_renormalised_top_k(k: int | None) -> None:
    """Checked against KL written with torch's own kl_div on explicit distributions."""
    import torch
    import torch.nn.functional as F
    from workbench_distill.loss import distill_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 11) * 3, torch.randn(2, 3, 11) * 3
    targets = torch.randint(0, 11, (2, 3))
    t, w = 2.5, 0.7
    top = teacher.topk(k or 11, dim=-1)
    parts = distill_loss(student, targets, top.values, top.indices, temperature=t, kd_weight=w)

    # The teacher's distribution over its top k at temperature t, zero elsewhere.
    p = torch.zeros_like(teacher).scatter(-1, top.indices, F.softmax(top.values / t, dim=-1))
    log_q = F.log_softmax(student / t, dim=-1)
    kl = F.kl_div(log_q.reshape(-1, 11), p.reshape(-1, 11), reduction="batchmean") * t * t
    ce = F.cross_entropy(student.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(parts.kd, kl)
    torch.testing.assert_close(parts.ce, ce)
    torch.testing.assert_close(parts.loss, w * kl + (1 - w) * ce)
    if k is None:  # the whole vocabulary: the textbook KD term on the full softmax
        full = F.kl_div(log_q, F.log_softmax(teacher / t, dim=-1), log_target=True, reduction="sum") / 6 * t * t
        torch.testing.assert_close(parts.kd, full)


def test_distilled_student_beats_hard_labels_alone_and_exports_to_gguf(inputs: dict[str, str]) -> None:
    distilled = run_inline("distill", options(inputs))
    hard = run_inline("distill", options(inputs, kd_weight=0.0, name="hard-labels"))
    kd_ppl, ce_ppl = distilled.result["perplexity"], hard.result["perplexity"]
    teacher_ppl = distilled.result["teacher_perplexity"]
    assert teacher_ppl < kd_ppl < 0.6 * ce_ppl, (teacher_ppl, kd_ppl, ce_ppl)

    # The reported perplexity is the evaluation stage's, on the student it registered.
    store = Store()
    student = store.find_artifact(distilled.result["model"])
    assert student.metrics["perplexity"] == pytest.approx(kd_ppl)
    evaluated = run_inline("eval", {"models": [student.id], "tasks": ["perplexity"], "dataset": inputs["dataset"],
                                    "context": 32})
    assert evaluated.result["metrics"][student.id]["perplexity"] == pytest.approx(kd_ppl, rel=1e-6)

    # Teacher and data are the student's parents; the table puts the two models side by side.
    assert sorted(student.parents) == sorted([inputs["teacher"], inputs["dataset"]])
    table = distilled.result["tables"][0]
    rows = {r[0]: r[1:] for r in table["rows"]}
    assert rows["held-out perplexity"] == [f"{teacher_ppl:.4g}", f"{kd_ppl:.4g} ({kd_ppl / teacher_ppl:.2f}×)"]
    assert distilled.result["params"] < distilled.result["teacher_params"]
    # The teacher's cached logits are gone once the student is written.
    assert not (distilled.run_dir / "teacher-topk").exists()

    exported = run_cli("export", student.id, "--gguf", "--quant", "f16", "--json")
    assert exported.returncode == 0, exported.stderr
    files = json.loads(exported.stdout)["result"]["files"]
    assert [f["passed"] for f in files] == [True]


def test_the_result_is_the_tradeoff_table_with_llama_cpp_speed_on_request(inputs: dict[str, str]) -> None:
    """The table prune shows: parameters, file size and perplexity against the teacher, and with
    --speed the Q4_K_M file the export stage writes and its decode rate in llama.cpp."""
    run = run_inline("distill", options(inputs, max_steps=4, speed=True))
    store = Store()
    student, teacher = store.find_artifact(run.result["model"]), store.find_artifact(inputs["teacher"])
    table = run.result["tables"][0]
    assert table["columns"] == ["", "teacher teacher", "student teacher-distilled"]
    rows = {r[0]: r[1:] for r in table["rows"]}
    assert list(rows) == ["parameters", "weights file", "held-out perplexity", "Q4_K_M file",
                          "Q4_K_M decode tokens/s", "time"]
    t_params, s_params = run.result["teacher_params"], run.result["params"]
    assert rows["parameters"] == [f"{t_params:,}", f"{s_params:,} ({s_params / t_params:.2f}×)"]
    teacher_row, student_row = run.result["measured"]
    assert teacher_row["size_bytes"] == (teacher.path / "model.safetensors").stat().st_size
    assert student_row["size_bytes"] == (student.path / "model.safetensors").stat().st_size
    assert teacher_row["q4_tokens_per_s"] > 0 and student_row["q4_tokens_per_s"] > 0
    assert student.metrics["q4_k_m_tokens_per_s"] == student_row["q4_tokens_per_s"]
    # The Q4_K_M size is that of the file `workbench export` writes for the student (which adds a
    # few metadata keys of its own).
    exported = run_cli("export", student.id, "--gguf", "--quant", "q4_k_m", "--json")
    assert exported.returncode == 0, exported.stderr
    (q4,) = json.loads(exported.stdout)["result"]["files"]
    assert abs(q4["size_bytes"] - student_row["q4_size_bytes"]) < 256
    descs = {e["desc"] for e in run.events if e["type"] == "progress"}
    assert "timing llama.cpp decoding" in descs


@pytest.mark.parametrize("change", ["vocabulary", "tokenizer"])
def test_a_student_with_another_tokenizer_is_refused_with_exit_2(inputs: dict[str, str], teacher_dir: Path,
                                                                 tmp_path: Path, workspace: Path,
                                                                 change: str) -> None:
    if change == "vocabulary":
        other = make_tiny_model(tmp_path / "other")
        message = "have different vocabularies"
    else:  # same size, two ids swapped: the same number of tokens meaning other things
        other = tmp_path / "other"
        shutil.copytree(teacher_dir, other)
        tok = json.loads((other / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab)[10:12]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (other / "tokenizer.json").write_text(json.dumps(tok))
        message = "have different tokenizers (tokenizer.json and tokenizer.json differ)"
    student = register_model(other, "other-student")
    before = {a.id for a in Store().list_artifacts()}

    out = run_cli("distill", inputs["teacher"], inputs["dataset"], "--student", "other-student")

    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert f"teacher 'teacher' ({inputs['teacher']})" in lines[0]
    assert f"student 'other-student' ({student})" in lines[0]
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())
    assert {a.id for a in Store().list_artifacts()} == before


@pytest.mark.parametrize(("flags", "message"), [
    (["--student", "huge"], "--student huge is neither a preset (tiny, small, 125M, 350M), a .yaml config file, "
                            "nor a model in the workspace"),
    (["--student", "tiny", "--top-k", "5000"], "--top-k 5000 is more than the teacher's vocabulary of"),
    (["--student", "tiny", "--batch-size", "4", "--micro-batch-size", "8"],
     "--micro-batch-size 8 is larger than --batch-size 4"),
    (["--student", "tiny", "--max-seq-length", "64"], "--max-seq-length 64 is longer than the context of the teacher (32 tokens)"),
    (["--student", "missing.yaml"], "student config file missing.yaml does not exist"),
])
def test_bad_options_are_refused_in_one_line_before_a_run_exists(inputs: dict[str, str], workspace: Path,
                                                                 flags: list[str], message: str) -> None:
    out = run_cli("distill", inputs["teacher"], inputs["dataset"], *flags)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), out.stderr
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_a_dataset_that_is_not_text_is_refused(inputs: dict[str, str]) -> None:
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": "instruction"}))
    (staged / "train.jsonl").write_text("")
    chats = ctx.register("dataset", staged, name="chats").id
    out = run_cli("distill", inputs["teacher"], chats, "--student", "tiny")
    assert out.returncode == 2
    assert "holds 'instruction' data, but distill needs 'pretrain' data" in out.stderr


def test_a_preset_student_is_fresh_with_the_teachers_vocabulary_tokenizer_and_prompt_style(
        inputs: dict[str, str], teacher_dir: Path) -> None:
    from workbench.ml.checkpoint import load_config, load_model, read_meta

    run = run_inline("distill", {**inputs, "student": "tiny", "max_steps": 2, "batch_size": 2})
    student = Store().find_artifact(run.result["model"])
    config, teacher = load_config(student.path), load_config(teacher_dir)
    assert (config.n_layer, config.n_embd) == (3, 256)  # the pretrain stage's tiny preset
    assert config.vocab_size == teacher.vocab_size
    assert (student.path / "tokenizer.json").read_bytes() == (teacher_dir / "tokenizer.json").read_bytes()
    assert read_meta(student.path)["prompt_style"] == read_meta(teacher_dir)["prompt_style"]
    assert read_meta(student.path)["distill"]["student"] == "tiny"
    load_model(student.path)  # a complete LitGPT checkpoint
    assert run.metrics("loss")[0] > 0 and len(run.metrics("loss")) == 2


def test_no_room_for_the_teacher_logits_is_refused_before_the_teacher_loads(inputs: dict[str, str],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench_distill.teacher

    from workbench.errors import UserError

    room = SimpleNamespace(total=1 << 40, used=(1 << 40) - 1000, free=1000)
    monkeypatch.setattr(workbench_distill.teacher.shutil, "disk_usage", lambda path: room)
    with pytest.raises(UserError, match=r"the teacher's top-16 logits need [\d.]+ [KM]iB in .*, but only 1000 B is free; "
                                        r"lower --top-k or --max-steps"):
        run_inline("distill", options(inputs))
    run = Store().list_runs(limit=1)[0]
    assert not (run.run_dir / "teacher-topk").exists()
    assert not [e for e in read_events(run.run_dir / "events.jsonl") if e["type"] == "progress"
                and e["desc"] == "teacher top-k logits"]


@pytest.mark.slow
def test_cancel_and_resume_reuse_the_teacher_logits_and_end_at_the_uninterrupted_loss(
        inputs: dict[str, str], teacher_dir: Path, tmp_path: Path) -> None:
    opts = options({**inputs, "student": register_model(random_student(teacher_dir, tmp_path / "start"), "start")},
                   max_steps=160, batch_size=4, micro_batch_size=2, checkpoint_every=20, eval_every=40)
    started = run_cli("distill", *cli_flags(opts), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id, run_dir = json.loads(started.stdout)["run_id"], Path(json.loads(started.stdout)["run_dir"])

    wait_for(lambda: losses(run_dir), 120, "the first training step")
    assert run_cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: Store().get_run(run_id).status == "cancelled", 120, "the run to stop")
    stopped = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "checkpoint"][-1]["step"]
    assert max(losses(run_dir)) == stopped < 160, "the run finished before the cancel arrived"
    assert (run_dir / "teacher-topk" / "values.npy").exists()

    resumed = run_cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run_dir / "events.jsonl")
    restart = max(i for i, e in enumerate(events) if e["type"] == "started")
    after = events[restart:]
    assert any(e["type"] == "log" and "reusing the teacher's top-16 logits" in e["message"] for e in after)
    assert not [e for e in after if e["type"] == "progress" and e["desc"] == "teacher top-k logits"]
    steps_after = [e["step"] for e in after if e["type"] == "metric" and "loss" in e["values"]]
    assert steps_after[0] == stopped + 1 and steps_after[-1] == 160

    whole = run_inline("distill", opts)
    ours, theirs = losses(run_dir), losses(whole.run_dir)
    assert ours[160] < 0.9 * ours[1]  # the student did train
    assert ours[160] == pytest.approx(theirs[160], abs=1e-4)
    assert losses(run_dir, "val_loss")[160] == pytest.approx(losses(whole.run_dir, "val_loss")[160], abs=1e-4)
    result = Store().get_run(run_id).result
    assert math.isclose(result["perplexity"], whole.result["perplexity"], rel_tol=1e-4)


def test_a_bf16_mixed_run_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(inputs: dict[str, str]) -> None:
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    assert_resumes_exactly("distill", options(inputs, precision="bf16-mixed", max_steps=4, micro_batch_size=2,
                                              checkpoint_every=2, eval_every=4, eval_batches=1))


def test_a_cancelled_teacher_pass_continues_where_it_stopped_and_keeps_the_teachers_top_k(
        teacher_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from workbench_distill.teacher import choose_windows, sequences, teacher_topk
    from workbench_evaluate.backends import TorchBackend

    from workbench.errors import Cancelled
    from workbench.events import EventWriter
    from workbench.ml.checkpoint import load_config, load_model

    vocab = load_config(teacher_dir).vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, 1000).astype(np.uint16)
    starts = choose_windows(len(tokens), 32, 10**6, seed=0)
    loads: list[int] = []

    def load_teacher() -> TorchBackend:
        loads.append(1)
        return TorchBackend(teacher_dir, context=32, device="cpu", precision="32-true", batch_size=4, threads=1)

    class CancelAt(Context):
        def progress(self, step: int, total: int | None = None, **kwargs: Any) -> None:
            super().progress(step, total, **kwargs)
            self.cancel_requested = step >= 12

    def topk(ctx_cls: type[Context], run_dir: Path) -> Any:
        run_dir.mkdir(exist_ok=True)
        ctx = ctx_cls(Store(), run_dir=run_dir, events=EventWriter(run_dir / "events.jsonl"))
        return teacher_topk(ctx, load_teacher, tokens, starts, seq_len=32, top_k=8, vocab_size=vocab, batch=4,
                            fingerprint={"test": 1}, perplexity=lambda backend: 1.5)

    with pytest.raises(Cancelled):
        topk(CancelAt, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "teacher-topk" / "state.json").read_text())["done"] == 12
    continued = topk(Context, tmp_path / "run")
    logs = [e["message"] for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "log"]
    assert f"continuing the teacher pass at sequence 13 of {len(starts)}" in logs
    whole = topk(Context, tmp_path / "whole")
    np.testing.assert_array_equal(continued.values, whole.values)
    np.testing.assert_array_equal(continued.indices, whole.indices)
    assert continued.perplexity == 1.5 and len(loads) == 3

    topk(Context, tmp_path / "run")  # finished: reused without loading the teacher again
    assert len(loads) == 3

    # What is kept is the teacher's own top k, row by row and position by position.
    model = load_model(teacher_dir)
    with torch.no_grad():
        top = model(sequences(tokens, starts[[0, 13, len(starts) - 1]], 32)[:, :-1])[..., :vocab].topk(8, dim=-1)
    rows = [0, 13, len(starts) - 1]
    np.testing.assert_array_equal(whole.indices[rows], top.indices.numpy())
    np.testing.assert_allclose(whole.values[rows].astype(np.float32), top.values.numpy(), rtol=1e-3, atol=1e-3)


def test_a_student_cut_from_the_teacher_starts_far_below_a_random_one_and_ends_nearer_the_teacher(
        inputs: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "narrow.yaml").write_text(NARROW_CONFIG)
    opts = options({**inputs, "student": str(tmp_path / "narrow.yaml")}, max_steps=20, eval_every=20, lr=3e-3)
    cut = run_inline("distill", opts)  # --init auto: the shapes fit, so from the teacher
    fresh = run_inline("distill", {**opts, "init": "random", "name": "fresh"})

    # The first step's loss is the starting weights' loss on the same batch.
    assert losses(cut.run_dir)[1] < 0.3 * losses(fresh.run_dir)[1], (losses(cut.run_dir), losses(fresh.run_dir))
    teacher_ppl = cut.result["teacher_perplexity"]
    assert cut.result["perplexity"] < 1.5 * teacher_ppl < fresh.result["perplexity"], (
        teacher_ppl, cut.result["perplexity"], fresh.result["perplexity"])
    logs = [e["message"] for e in cut.events if e["type"] == "log"]
    assert any(m.startswith("the student starts from the teacher's weights without block(s) [") for m in logs), logs
    store = Store()
    assert read_recipe(store, cut)["init"] == "teacher" and read_recipe(store, fresh)["init"] == "random"


def read_recipe(store: Store, run: Any) -> dict[str, Any]:
    return store.find_artifact(run.result["model"]).metadata["distill"]


def test_a_student_of_the_teachers_shape_is_the_teacher_and_a_narrower_one_its_most_important_part(
        teacher_dir: Path) -> None:
    import numpy as np
    import torch
    from litgpt import Config
    from workbench_distill.from_teacher import student_from_teacher
    from workbench_distill.teacher import choose_windows, sequences

    from workbench.ml.checkpoint import config_to_dict, load_config, load_model

    config = load_config(teacher_dir)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 2000).astype(np.uint16)
    starts = choose_windows(len(tokens), 32, 40, seed=0)
    teacher = load_model(teacher_dir)
    x = sequences(tokens, starts[:4], 32)[:, :-1]

    same, dropped = student_from_teacher(teacher_dir, config, tokens, starts, 32, lambda done, total: None)
    assert dropped == []
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), teacher(x), rtol=0, atol=0)

    narrow_config = Config(**{**config_to_dict(config), "n_layer": 1, "intermediate_size": 64})
    narrow, dropped = student_from_teacher(teacher_dir, narrow_config, tokens, starts, 32, lambda done, total: None)
    (gone,) = dropped
    kept, block = teacher.transformer.h[1 - gone], narrow.transformer.h[0]
    assert torch.equal(block.attn.qkv.weight, kept.attn.qkv.weight)
    assert torch.equal(block.norm_1.weight, kept.norm_1.weight)
    assert torch.equal(narrow.transformer.wte.weight, teacher.transformer.wte.weight)
    assert torch.equal(narrow.lm_head.weight, teacher.lm_head.weight)
    # Each of the student's MLP channels is one of the teacher's, whole: its fc_1 and fc_2 rows and proj column.
    rows = [int(torch.nonzero((kept.mlp.fc_1.weight == r).all(dim=1))[0]) for r in block.mlp.fc_1.weight]
    assert len(set(rows)) == 64 and rows == sorted(rows)
    assert torch.equal(block.mlp.fc_2.weight, kept.mlp.fc_2.weight[rows])
    assert torch.equal(block.mlp.proj.weight, kept.mlp.proj.weight[:, rows])


def test_init_teacher_with_a_student_the_teachers_weights_do_not_fit_is_refused(inputs: dict[str, str]) -> None:
    before = {a.id for a in Store().list_artifacts()}
    out = run_cli("distill", *cli_flags(options(inputs, max_steps=2)), "--init", "teacher")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].endswith(f": --init teacher: the student {inputs['student']} cannot start from the teacher's "
                              "weights: n_embd 32 (teacher 64), n_head 2 (teacher 4), n_query_groups 1 (teacher 2) "
                              "differ"), out.stderr
    assert {a.id for a in Store().list_artifacts()} == before


def test_init_teacher_with_a_model_as_student_is_refused_before_a_run_exists(inputs: dict[str, str],
                                                                             workspace: Path) -> None:
    out = run_cli("distill", inputs["teacher"], inputs["dataset"], "--student", inputs["teacher"], "--init", "teacher")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: --init teacher needs a preset or YAML student; model {inputs['teacher']} starts from its own weights"]
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())
