"""`workbench pretrain`: real LitGPT training with Lightning Fabric on tiny models and real data.

Every test builds its dataset and tokenizer in its own workspace. The runs that matter to a
user go through the real CLI and worker processes: cancel and resume, two-process DDP, the
memory refusal.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tokenizer, run_cli, wait_for
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.events import read_events
from workbench.store import Store
from workbench.testing import run_inline

#: A small Llama-style model as a user's YAML config: fast enough for many runs per test.
MICRO_CONFIG = """\
# a user's own model: any litgpt.Config fields
n_layer: 2
n_embd: 64
n_head: 4
n_query_groups: 2
intermediate_size: 192
block_size: 64
rotary_percentage: 1.0
parallel_residual: false
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
"""


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One torch thread per process, here and in the workers: on a shared 2-core machine, busy
    OpenMP threads of parallel tests make each other an order of magnitude slower."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_corpus() -> list[str]:
    """The start of the demo pretraining corpus (standard-library docstrings + templated prose)."""
    from workbench_data.demo import pretrain_records

    return [r.value for r in pretrain_records(seed=0, n_chars=160_000)]


def register_dataset(train: list[str], val: list[str], kind: str = "pretrain") -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": kind, "counts": {"train": len(train), "val": len(val)}}))
    for split, docs in (("train", train), ("val", val)):
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    return ctx.register("dataset", staged, name=f"{kind}-data").id


def register_tokenizer(text: str, vocab_size: int) -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("tokenizer")
    make_tokenizer(staged, vocab_size=vocab_size, text=text)
    return ctx.register("tokenizer", staged, name="bpe").id


@pytest.fixture
def inputs(demo_corpus: list[str], tmp_path: Path) -> dict[str, str]:
    """Dataset, tokenizer and the micro model config registered in this test's workspace."""
    cut = len(demo_corpus) * 9 // 10
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO_CONFIG)
    return {
        "dataset": register_dataset(demo_corpus[:cut], demo_corpus[cut:]),
        "tokenizer": register_tokenizer(" ".join(demo_corpus[:400]), vocab_size=384),
        "model": str(config),
    }


def micro_options(inputs: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {**inputs, "max_seq_length": 64, "batch_size": 8, "micro_batch_size": 4, "lr": 3e-3,
            "eval_every": 5, "eval_batches": 2, **overrides}


def cli_flags(options: dict[str, Any]) -> list[str]:
    flags = [options["dataset"]]
    for key, value in options.items():
        if key != "dataset":
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def metric_events(run_dir: Path, name: str) -> list[tuple[int, float]]:
    return [(e["step"], e["values"][name]) for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "metric" and name in e["values"]]


# ----------------------------------------------------------------------------------------------


def test_presets_are_llama_style_quantizable_and_counted_right() -> None:
    import torch
    from litgpt import GPT, Config
    from workbench_pretrain.presets import PRESETS

    for preset in PRESETS.values():
        config = Config(**preset.config(vocab_size=5000))
        assert (config.norm_class_name, config.mlp_class_name, config.rotary_percentage) == ("RMSNorm", "LLaMAMLP", 1.0)
        assert not config.parallel_residual and not config.bias
        assert 1 < config.n_query_groups < config.n_head, "grouped-query attention"
        # K-quants need every weight's input width to be a multiple of 256.
        for width in (config.n_embd, config.n_head * config.head_size, config.intermediate_size):
            assert width % 256 == 0, (preset.name, width)
        with torch.device("meta"):
            model = GPT(config)
        assert preset.params(5000) == sum(p.numel() for p in model.parameters()), preset.name
    assert 100e6 < PRESETS["125M"].params() < 150e6
    assert 300e6 < PRESETS["350M"].params() < 400e6


def test_help_lists_presets_with_parameter_counts_without_importing_torch() -> None:
    out = run_cli("pretrain", "--help")
    assert out.returncode == 0, out.stderr
    for line in ("tiny", "small", "125M", "350M"):
        row = next(r for r in out.stdout.splitlines() if r.strip().startswith(line + " "))
        assert "M" in row.split()[6], row  # the parameter count column, e.g. 124.7M
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, workbench_pretrain.stage; "
         "print(sorted({'torch', 'litgpt', 'lightning'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"


@pytest.mark.slow
def test_tiny_preset_learns_the_demo_corpus_and_litgpt_loads_the_result(demo_corpus: list[str]) -> None:
    cut = len(demo_corpus) * 9 // 10
    dataset = register_dataset(demo_corpus[:cut], demo_corpus[cut:])
    tokenizer = register_tokenizer(" ".join(demo_corpus[:400]), vocab_size=1024)
    run = run_inline("pretrain", {"dataset": dataset, "tokenizer": tokenizer, "model": "tiny",
                                  "max_steps": 30, "eval_every": 10, "eval_batches": 2})

    val = metric_events(run.run_dir, "val_loss")
    assert val[0][0] == 0 and val[-1][0] == 30
    # From about ln(vocab) to 2 nats lower: validation perplexity falls more than 7-fold.
    assert val[-1][1] < val[0][1] - 2.0, f"validation loss {val[0][1]:.2f} → {val[-1][1]:.2f}"
    steps = [s for s, _ in metric_events(run.run_dir, "loss")]
    assert steps == list(range(1, 31))  # one event per optimizer step
    assert len(metric_events(run.run_dir, "tokens_per_s")) == 30 and len(metric_events(run.run_dir, "lr")) == 30
    assert any(e["type"] == "progress" and e["unit"] == "step" and e["eta_s"] is not None for e in run.events)

    (model,) = run.artifacts("model")
    assert set(model.parents) == {dataset, tokenizer}
    for name in ("model.safetensors", "lit_model.pth", "model_config.yaml", "tokenizer.json",
                 "tokenizer_config.json", "generation_config.json"):
        assert (model.path / name).is_file(), name
    meta = json.loads((model.path / "workbench.json").read_text())
    assert meta["family"] == "llama" and meta["prompt_style"]["name"] == "chatml"
    assert meta["init"] == "torch"  # the tiny preset's: the one under which it learns to copy
    gen = subprocess.run(
        [str(Path(sys.executable).parent / "litgpt"), "generate", str(model.path), "--prompt", "The capital of",
         "--max_new_tokens", "8", "--temperature", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "The capital of" in gen.stdout and len(gen.stdout.split("The capital of", 1)[1].strip()) > 0


def test_micro_model_from_yaml_trains_with_accumulation_and_checkpoints(inputs: dict[str, str]) -> None:
    run = run_inline("pretrain", micro_options(inputs, max_steps=10, checkpoint_every=4, warmup_steps=3))
    loss = [v for _, v in metric_events(run.run_dir, "loss")]
    assert len(loss) == 10 and loss[-1] < loss[0] - 0.5
    lrs = [v for _, v in metric_events(run.run_dir, "lr")]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(3e-3), "linear warmup to the peak"
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] == pytest.approx(3e-4), "cosine decay to peak / 10"
    checkpoints = [e for e in run.events if e["type"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [4, 8]
    assert sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) == ["step-000004.pt", "step-000008.pt"]
    (model,) = run.artifacts("model")
    from tokenizers import Tokenizer

    from workbench.ml.checkpoint import load_config

    config = load_config(model.path)
    vocab = Tokenizer.from_file(str(model.path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    assert (config.n_embd, config.n_layer, config.vocab_size) == (64, 2, vocab)  # the YAML, sized to the tokenizer
    assert run.result["val_ppl"] == pytest.approx(math.exp(run.result["val_loss"]))


@pytest.mark.parametrize(("init", "embedding_std"), [("auto", math.sqrt(2 / 5 / 64)), ("neox", math.sqrt(2 / 5 / 64)),
                                                     ("torch", 1.0)])
def test_init_chooses_the_starting_weights(inputs: dict[str, str], init: str, embedding_std: float) -> None:
    import torch

    # A learning rate of 0 leaves the weights as they were initialised.
    run = run_inline("pretrain", micro_options(inputs, max_steps=1, lr=0.0, init=init))
    (model,) = run.artifacts("model")
    state = torch.load(model.path / "lit_model.pth", weights_only=True)
    assert float(state["transformer.wte.weight"].std()) == pytest.approx(embedding_std, rel=0.05)
    assert torch.equal(state["transformer.h.0.norm_1.weight"], torch.ones(64))
    expected = "neox" if init == "auto" else init  # a YAML config has no preset: LitGPT's scheme
    assert json.loads((model.path / "workbench.json").read_text())["init"] == expected


def test_continued_pretraining_starts_from_the_models_weights(registered_tiny_model: str, tiny_model: Path) -> None:
    import numpy as np
    from litgpt.utils import chunked_cross_entropy
    from workbench_data.tokencache import token_array
    from workbench_pretrain.data import validation_windows

    from tests.conftest import SAMPLE_TEXT
    from workbench.ml.checkpoint import load_model

    lines = [ln for ln in SAMPLE_TEXT.splitlines() if ln.strip()]
    dataset = register_dataset(lines * 40, lines * 4)
    run = run_inline("pretrain", {"dataset": dataset, "init_from": registered_tiny_model, "max_steps": 3,
                                  "max_seq_length": 32, "batch_size": 4, "eval_batches": 2,
                                  "lr": 1e-3})

    # The first validation loss is the parent model's own loss on the same windows.
    dataset_dir = Store().find_artifact(dataset).path
    rows = validation_windows(np.asarray(token_array(dataset_dir, tiny_model, "val")), 32, 2 * 4)
    model = load_model(tiny_model)
    model.max_seq_length = 32
    import torch

    with torch.no_grad():
        expected = float(chunked_cross_entropy(model(rows[:, :-1]), rows[:, 1:]))
    first_val = metric_events(run.run_dir, "val_loss")[0]
    assert first_val[0] == 0 and first_val[1] == pytest.approx(expected, abs=1e-5)
    (out,) = run.artifacts("model")
    assert registered_tiny_model in out.parents and dataset in out.parents
    assert (out.path / "model_config.yaml").read_text() == (tiny_model / "model_config.yaml").read_text()


def test_bad_input_is_refused_before_anything_is_written(inputs: dict[str, str], workspace: Path,
                                                         registered_tiny_model: str) -> None:
    both = run_cli("pretrain", inputs["dataset"], "--tokenizer", inputs["tokenizer"],
                   "--init-from", registered_tiny_model)
    assert both.returncode == 2 and "--init-from" in both.stderr
    init_continued = run_cli("pretrain", inputs["dataset"], "--init-from", registered_tiny_model, "--init", "torch")
    assert init_continued.returncode == 2 and "--init" in init_continued.stderr
    sft = register_dataset(["a"], ["b"], kind="instruction")
    wrong = run_cli("pretrain", sft, "--tokenizer", inputs["tokenizer"])
    assert wrong.returncode == 2 and "pretrain dataset" in wrong.stderr
    uneven = run_cli("pretrain", inputs["dataset"], "--tokenizer", inputs["tokenizer"], "--batch-size", "10",
                     "--micro-batch-size", "4")
    assert uneven.returncode == 2 and "--batch-size 10" in uneven.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_unknown_model_and_broken_yaml_fail_as_user_errors(inputs: dict[str, str], tmp_path: Path) -> None:
    unknown = run_cli("pretrain", inputs["dataset"], "--tokenizer", inputs["tokenizer"], "--model", "gpt-17")
    assert unknown.returncode == 2 and "unknown model 'gpt-17'" in unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("n_layer: 2\nn_embd: [64\n")
    bad = run_cli("pretrain", inputs["dataset"], "--tokenizer", inputs["tokenizer"], "--model", str(broken))
    assert bad.returncode == 2 and f"{broken}:3" in bad.stderr


def test_a_model_that_cannot_fit_is_refused_with_exit_2(inputs: dict[str, str], tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text(MICRO_CONFIG.replace("n_layer: 2", "n_layer: 96").replace("n_embd: 64", "n_embd: 65536")
                    .replace("intermediate_size: 192", "intermediate_size: 262144").replace("n_head: 4", "n_head: 512")
                    .replace("n_query_groups: 2", "n_query_groups: 64"))
    out = run_cli("pretrain", inputs["dataset"], "--tokenizer", inputs["tokenizer"], "--model", str(huge))
    assert out.returncode == 2, out.stderr
    assert "needs about" in out.stderr and "--force" in out.stderr
    assert not Store().list_artifacts("model")


@pytest.mark.slow
def test_cancelled_and_resumed_run_ends_like_an_uninterrupted_one(inputs: dict[str, str]) -> None:
    options = micro_options(inputs, max_steps=80, checkpoint_every=4, batch_size=32, micro_batch_size=8)
    started = run_cli("pretrain", *cli_flags(options), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id, run_dir = json.loads(started.stdout)["run_id"], Path(json.loads(started.stdout)["run_dir"])

    def first_checkpoint() -> bool:
        return any(e["type"] == "checkpoint" for e in read_events(run_dir / "events.jsonl"))

    wait_for(first_checkpoint, 240, "the first checkpoint")
    assert run_cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: Store().get_run(run_id).status == "cancelled", 120, "the run to stop")
    cancelled_at = max(s for s, _ in metric_events(run_dir, "loss"))
    assert cancelled_at < 80, "the run finished before the cancel arrived"
    checkpoint_step = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "checkpoint"][-1]["step"]
    assert checkpoint_step == cancelled_at  # a checkpoint is written on cancel

    resumed = run_cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run_dir / "events.jsonl")
    restart = max(i for i, e in enumerate(events) if e["type"] == "started")
    after = [e["step"] for e in events[restart:] if e["type"] == "metric" and "loss" in e["values"]]
    assert after[0] == checkpoint_step + 1 and after[-1] == 80

    reference = run_inline("pretrain", options)
    resumed_loss = metric_events(run_dir, "loss")[-1][1]
    reference_loss = metric_events(reference.run_dir, "loss")[-1][1]
    assert resumed_loss == pytest.approx(reference_loss, abs=1e-4)
    assert metric_events(run_dir, "val_loss")[-1][1] == pytest.approx(
        metric_events(reference.run_dir, "val_loss")[-1][1], abs=1e-4)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process_with_the_same_batch(inputs: dict[str, str]) -> None:
    options = micro_options(inputs, max_steps=6, batch_size=8, micro_batch_size=4)
    out = run_cli("pretrain", *cli_flags({**options, "devices": 2, "strategy": "ddp"}), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    run_dir = Store().get_run(report["run_id"]).run_dir
    events = read_events(run_dir / "events.jsonl")
    assert [e["type"] for e in events].count("started") == 1
    assert [s for s, _ in metric_events(run_dir, "loss")] == list(range(1, 7))  # one reporter, not two
    assert len(report["artifacts"]) == 1 and report["artifacts"][0]["kind"] == "model"
    assert any("2 process(es)" in e.get("message", "") for e in events)

    single = run_inline("pretrain", options)
    ddp_loss = metric_events(run_dir, "loss")
    single_loss = metric_events(single.run_dir, "loss")
    assert [v for _, v in ddp_loss] == pytest.approx([v for _, v in single_loss], abs=1e-4)


@pytest.mark.slow
def test_an_error_in_a_training_process_ends_the_run_with_its_message(inputs: dict[str, str],
                                                                      registered_tiny_model: str) -> None:
    import torch

    model_dir = Store().find_artifact(registered_tiny_model).path
    # A whole checkpoint that holds a pickled object: validate() reads only its structure, the
    # ranks find out when they load the weights.
    (model_dir / "model.safetensors").unlink()
    torch.save({"model": {}, "where": Path("elsewhere")}, model_dir / "lit_model.pth")
    out = run_cli("pretrain", inputs["dataset"], "--init-from", registered_tiny_model, "--max-steps", "2",
                  "--max-seq-length", "32", "--batch-size", "4", "--devices", "2", "--json")
    assert out.returncode == 2, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "failed" and "never unpickles" in report["error"]
    assert Store().get_run(report["run_id"]).status == "failed" and not report["artifacts"]
    assert not list((model_dir.parent).glob(".staging-*")), "no half-written model is left behind"


def test_a_bf16_mixed_run_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(inputs: dict[str, str]) -> None:
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    assert_resumes_exactly("pretrain", micro_options(inputs, precision="bf16-mixed", max_steps=6, checkpoint_every=2,
                                                     eval_every=3, device="cpu"))
