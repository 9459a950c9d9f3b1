"""`workbench dpo`: real LitGPT training of a tiny model on a small, clearly separable preference
set made here (polite lowercase answers preferred to shouted ones)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_for
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.errors import UserError
from workbench.events import read_events
from workbench.ml.checkpoint import load_model, load_tokenizer, read_meta
from workbench.ml.examples import encode_pair
from workbench.ml.lora import adapters_disabled, load_lora_model, read_adapter
from workbench.prompts import style_for_model
from workbench.store import Store
from workbench.testing import run_inline

DEMO = Path(__file__).resolve().parents[2] / "assets" / "data"
NOUNS = [
    "fox", "dog", "cat", "bird", "tree", "lake", "road", "house", "river", "stone",
    "cloud", "apple", "bread", "chair", "clock", "door", "field", "garden", "hill", "island",
]


def pref_row(noun: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Tell me about the {noun}."}],
            "chosen": f"the {noun} is calm and kind.", "rejected": f"THE {noun.upper()} IS BAD!!!"}


def register_dataset(train: list[dict], val: list[dict], *, kind: str = "preference", name: str = "prefs") -> str:
    """A dataset artifact as `workbench data prepare` leaves it: card.json + train/val JSONL."""
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": kind, "counts": {"train": len(train), "val": len(val)}}))
    for split, rows in (("train", train), ("val", val)):
        (staged / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ctx.register("dataset", staged, name=name).id


@pytest.fixture
def prefs() -> str:
    return register_dataset([pref_row(n) for n in NOUNS[:16]], [pref_row(n) for n in NOUNS[16:]])


@pytest.fixture
def demo_prefs() -> str:
    """The first rows of the embedded demo preference set (assets/data)."""

    def head(split: str, n: int) -> list[dict]:
        lines = (DEMO / f"preference.{split}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines[:n]]

    return register_dataset(head("train", 16), head("val", 8), name="demo-prefs")


def answer_logp(model: torch.nn.Module, tok, style, row: dict, answer: str) -> float:
    """Sum of log p(answer token) after the chat-time prompt, written out independently of the stage."""
    enc = encode_pair(tok, style, row["messages"], answer)
    with torch.no_grad():
        logits = model(enc.input_ids[None])[0, :-1]
    lp = logits.log_softmax(-1).gather(-1, enc.input_ids[1:, None])[:, 0]
    return lp[enc.n_prompt - 1 :].sum().item()


def mean_logps(model: torch.nn.Module, model_dir: Path, rows: list[dict]) -> tuple[float, float]:
    tok, style = load_tokenizer(model_dir), style_for_model(model_dir)
    chosen = [answer_logp(model, tok, style, r, r["chosen"]) for r in rows]
    rejected = [answer_logp(model, tok, style, r, r["rejected"]) for r in rows]
    return sum(chosen) / len(rows), sum(rejected) / len(rows)


def val_events(run) -> list[dict]:
    return [e for e in run.events if e["type"] == "metric" and "val_loss" in e["values"]]


def test_stage_module_imports_nothing_heavy():
    code = "import sys, workbench_dpo.stage; print([m for m in ('torch', 'litgpt', 'llama_cpp') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("loss", "expected"), [("sigmoid", math.log(2)), ("cdpo", math.log(2)), ("ipo", 1 / (4 * 0.1**2))])
def test_first_step_loss_is_that_of_policy_equal_to_reference(registered_tiny_model, demo_prefs, loss, expected):
    run = run_inline("dpo", {"model": registered_tiny_model, "dataset": demo_prefs, "loss": loss, "beta": 0.1,
                             "max_steps": 1, "batch_size": 4})
    assert run.metrics("loss")[0] == pytest.approx(expected, rel=1e-6)
    start = val_events(run)[0]
    assert start["step"] == 0
    assert start["values"]["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert start["values"]["val_reward_margin"] == 0.0


def test_dpo_raises_heldout_reward_accuracy_and_margin_with_reference_fixed(registered_tiny_model, prefs):
    store = Store()
    base_dir = store.find_artifact(registered_tiny_model).path
    val_rows = [pref_row(n) for n in NOUNS[16:]]
    ref_before = mean_logps(load_model(base_dir), base_dir, val_rows)

    run = run_inline("dpo", {"model": registered_tiny_model, "dataset": prefs, "max_steps": 30, "batch_size": 4,
                             "lr": 1e-3, "eval_every": 10, "targets": ["query", "value", "projection", "mlp"]})

    evals = [e["values"] for e in val_events(run)]
    assert [e["step"] for e in val_events(run)] == [0, 10, 20, 30]
    first, last = evals[0], evals[-1]
    assert first["val_reward_accuracy"] == 0.0 and first["val_reward_margin"] == 0.0
    assert last["val_reward_accuracy"] >= 0.75
    assert last["val_reward_margin"] > 0.5
    assert last["val_loss"] < 0.5 * math.log(2)
    losses = run.metrics("loss")
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.6 * losses[0]

    # The reference never moves: every evaluation scores it exactly as the untouched base model did.
    for values in evals:
        assert values["val_ref_logps_chosen"] == pytest.approx(ref_before[0], abs=1e-4)
        assert values["val_ref_logps_rejected"] == pytest.approx(ref_before[1], abs=1e-4)
    assert last["val_logps_chosen"] - first["val_logps_chosen"] > 1.0

    merged = store.find_artifact(run.result["model"])
    adapter = store.find_artifact(run.result["adapter"])
    # The merged model is the trained policy: its log-probabilities are the ones reported.
    policy = mean_logps(load_model(merged.path), merged.path, val_rows)
    assert policy[0] == pytest.approx(last["val_logps_chosen"], abs=1e-3)
    assert policy[1] == pytest.approx(last["val_logps_rejected"], abs=1e-3)
    assert policy[0] - policy[1] > ref_before[0] - ref_before[1] + 5.0  # prefers the polite answers now
    # After training, switching the adapter off still gives the reference of before training.
    settings, weights, cfg = read_adapter(adapter.path)
    lora = load_lora_model(base_dir, settings).eval()
    lora.load_state_dict(weights, strict=False)
    with adapters_disabled(lora):
        assert mean_logps(lora, base_dir, val_rows) == pytest.approx(ref_before, abs=1e-4)

    # Lineage and the prompt style carried over.
    assert cfg["base_model"] == registered_tiny_model
    assert registered_tiny_model in adapter.parents and prefs in adapter.parents
    assert sorted(merged.parents) == sorted([registered_tiny_model, adapter.id, prefs])
    assert read_meta(merged.path)["prompt_style"] == read_meta(base_dir)["prompt_style"]
    assert merged.metrics["val_reward_accuracy"] == pytest.approx(last["val_reward_accuracy"])


def test_separate_reference_model_gives_the_same_training(registered_tiny_model, prefs, tiny_model):
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(tiny_model, staged)
    reference = ctx.register("model", staged, name="tiny-copy").id
    opts = {"model": registered_tiny_model, "dataset": prefs, "max_steps": 4, "batch_size": 4, "lr": 1e-3,
            "eval_every": 2}
    off = run_inline("dpo", opts)
    separate = run_inline("dpo", {**opts, "reference": reference})
    assert separate.metrics("loss") == pytest.approx(off.metrics("loss"), abs=1e-6)
    assert separate.metrics("val_reward_margin") == pytest.approx(off.metrics("val_reward_margin"), abs=1e-6)
    assert reference in Store().find_artifact(separate.result["adapter"]).parents


def _runs_dir(workspace: Path) -> list[Path]:
    return list((workspace / "runs").glob("*")) if (workspace / "runs").exists() else []


@pytest.mark.parametrize(("rows", "message"), [
    ([pref_row("fox"), {"messages": [{"role": "user", "content": "hi"}], "chosen": "hello"}],
     r"train\.jsonl:2: the row has no 'rejected' field"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
       "chosen": "a", "rejected": "b"}], r"train\.jsonl:1: the prompt turns must end with a user turn"),
    ([pref_row("fox"), pref_row("dog"), "not an object"], r"train\.jsonl:3: a preference row must be a JSON object"),
])
def test_malformed_rows_are_refused_before_a_run_exists(registered_tiny_model, workspace, rows, message):
    data = register_dataset(rows, [])
    with pytest.raises(UserError, match=message):
        run_inline("dpo", {"model": registered_tiny_model, "dataset": data})
    assert _runs_dir(workspace) == []


def test_dataset_of_another_type_is_refused_by_the_cli(registered_tiny_model, workspace, cli):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    data = register_dataset(rows, [], kind="instruction", name="sft-data")
    out = cli("dpo", registered_tiny_model, "sft-data")
    assert out.returncode == 2, out.stderr
    assert "has type 'instruction', but dpo needs a preference dataset" in out.stderr.replace("\n", " ")
    assert "Traceback" not in out.stderr
    assert data and _runs_dir(workspace) == []


def test_too_long_pair_is_refused_with_its_line_before_training(registered_tiny_model, prefs):
    long_row = {**pref_row("fox"), "rejected": "no " * 200}
    data = register_dataset([pref_row(n) for n in NOUNS[:4]] + [long_row], [])
    with pytest.raises(UserError, match=r"train\.jsonl:5 is \d+ tokens long, more than the model's context of 128"):
        run_inline("dpo", {"model": registered_tiny_model, "dataset": data})
    store = Store()
    run = store.list_runs(limit=1)[0]
    assert not [e for e in read_events(run.run_dir / "events.jsonl") if e["type"] in ("metric", "checkpoint")]
    assert [a.kind for a in store.list_artifacts()] == ["model", "dataset", "dataset"]


def test_memory_preflight_refuses_a_run_that_cannot_fit(registered_tiny_model, prefs, monkeypatch):
    import workbench.hardware

    monkeypatch.setattr(workbench.hardware, "available_memory", lambda device: 1024**2)
    with pytest.raises(UserError, match=r"this DPO run needs about .* only 1\.0 MiB is available; lower --batch-size"):
        run_inline("dpo", {"model": registered_tiny_model, "dataset": prefs})
    assert not Store().list_artifacts("adapter")


@pytest.mark.slow
def test_cancel_and_resume_through_the_cli_equals_an_uninterrupted_run(registered_tiny_model, prefs, cli):
    from safetensors.torch import load_file

    opts = {"max_steps": 60, "batch_size": 4, "lr": 1e-3, "dropout": 0.2, "eval_every": 20,
            "checkpoint_every": 15}
    whole = run_inline("dpo", {"model": registered_tiny_model, "dataset": prefs, **opts})

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    started = cli("dpo", registered_tiny_model, prefs, *flags, "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    events_path = Path(json.loads(started.stdout)["run_dir"]) / "events.jsonl"

    def step_reached():
        steps = [e["step"] for e in read_events(events_path) if e["type"] == "metric" and "loss" in e["values"]]
        return steps and steps[-1] >= 3

    wait_for(step_reached, 120, "the step to cancel at")
    assert cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: any(e["type"] == "cancelled" for e in read_events(events_path)), 120, "the cancel")
    stopped_at = max(e["step"] for e in read_events(events_path) if e["type"] == "checkpoint")
    assert 3 <= stopped_at < 60

    resumed = cli("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    events = read_events(events_path)
    assert any(e["type"] == "log" and f"resumed at step {stopped_at}" in e["message"] for e in events)

    store = Store()
    interrupted = store.find_artifact(json.loads(resumed.stdout)["result"]["adapter"])
    ours = load_file(str(interrupted.path / "adapter.safetensors"))
    theirs = load_file(str(store.find_artifact(whole.result["adapter"]).path / "adapter.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    # The losses after the resume are those the uninterrupted run saw at the same steps.
    losses = {e["step"]: e["values"]["loss"] for e in events if e["type"] == "metric" and "loss" in e["values"]}
    assert [losses[s] for s in range(1, 61)] == pytest.approx(whole.metrics("loss"), abs=1e-6)


def test_a_bf16_mixed_run_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(registered_tiny_model, prefs):
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    assert_resumes_exactly("dpo", {
        "model": registered_tiny_model, "dataset": prefs, "precision": "bf16-mixed", "max_steps": 4,
        "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "dropout": 0.2, "eval_every": 4, "checkpoint_every": 2,
        "eval_pairs": 4,
    })


def test_replay_holds_the_language_model_while_the_preference_is_learned(registered_tiny_model, prefs):
    from workbench_data.demo import pretrain_records

    from tests.stages.test_finetune_lora import text_loss

    texts = [r.value for r in pretrain_records(seed=0, n_chars=60_000)]
    corpus = register_dataset([{"text": t} for t in texts[:-20]], [{"text": t} for t in texts[-20:]],
                              kind="pretrain", name="corpus")
    options = {"model": registered_tiny_model, "dataset": prefs, "max_steps": 12, "batch_size": 4, "lr": 1e-2,
               "eval_every": 12, "checkpoint_every": 6, "targets": ["query", "value", "projection", "mlp"]}
    plain = run_inline("dpo", options)
    replayed, _ = assert_resumes_exactly("dpo", {**options, "replay": corpus, "replay_windows": 4,
                                                 "replay_length": 64})

    held_out = texts[-20:]
    store = Store()
    losses = {name: text_loss(store.find_artifact(model).path, held_out) for name, model in
              (("base", registered_tiny_model), ("plain", plain.result["model"]),
               ("replay", replayed.result["model"]))}
    assert losses["replay"] < losses["plain"] - 0.1 and losses["replay"] < losses["base"], losses
    assert val_events(replayed)[-1]["values"]["val_reward_accuracy"] >= 0.75  # the preference is still learned
    assert all("replay_loss" in e["values"] and "preference_loss" in e["values"]
               for e in replayed.events if e["type"] == "metric" and "loss" in e["values"])
    assert corpus in store.find_artifact(replayed.result["model"]).parents


def test_sft_weight_keeps_the_chosen_answers_likely(registered_tiny_model, prefs):
    # Plain DPO only widens the gap: it may lower the chosen answers too, their end-of-turn token
    # included. The chosen answers' own loss (RPO) holds them up.
    options = {"model": registered_tiny_model, "dataset": prefs, "max_steps": 12, "batch_size": 4, "lr": 1e-2,
               "eval_every": 12, "targets": ["query", "value", "projection", "mlp"]}
    plain = val_events(run_inline("dpo", options))[-1]["values"]
    run = run_inline("dpo", {**options, "sft_weight": 1.0})
    weighted = val_events(run)[-1]["values"]
    assert weighted["val_logps_chosen"] > plain["val_logps_chosen"] + 1.0, (plain, weighted)
    assert weighted["val_reward_accuracy"] >= 0.75
    nll = [e["values"]["chosen_nll"] for e in run.events if e["type"] == "metric" and "chosen_nll" in e["values"]]
    assert len(nll) >= 12 and nll[-1] < nll[0]
    assert "chosen_nll" not in plain
