"""LoRA instruction finetuning on a tiny model and the demo instruction set: the loss falls, only
the adapter changes, the merge is exact, a cancelled run resumes to the same losses, and bad input
is refused before training with the file and line named."""

from __future__ import annotations

import json
import shutil
from itertools import islice

import pytest
import torch

from tests.conftest import ROOT, make_tiny_model, run_cli, wait_for
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.errors import UserError
from workbench.events import read_events
from workbench.store import Store
from workbench.testing import run_inline

DEMO = ROOT / "assets" / "data"


def register_dataset(kind: str, train: list[dict], val: list[dict], name: str = "data") -> str:
    """A dataset artifact as `workbench data prepare` writes it: card.json + train/val JSONL."""
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": kind, "train_rows": len(train), "val_rows": len(val)}))
    for split, rows in (("train", train), ("val", val)):
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return ctx.register("dataset", staged, name=name, metadata={"type": kind}).id


def demo_rows(split: str, n: int) -> list[dict]:
    with open(DEMO / f"instruction.{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in islice(fh, n)]


@pytest.fixture
def demo_instructions() -> str:
    # A slice of the demo set keeps the test to seconds on two CPU cores.
    return register_dataset("instruction", demo_rows("train", 64), demo_rows("val", 32), name="demo-instructions")


def base_options(model: str, dataset: str, **extra) -> dict:
    return {"model": model, "dataset": dataset, "rank": 4, "alpha": 8, "dropout": 0.05,
            "targets": "query,value,mlp,head", "lr": 1e-2, "warmup_steps": 2, "batch_size": 8,
            "device": "cpu", "precision": "32-true", "seed": 7, **extra}


def test_lora_lowers_val_loss_changes_only_adapter_and_merges_exactly(registered_tiny_model, demo_instructions):
    from safetensors.torch import load_file

    from workbench.ml.checkpoint import load_model, load_state_dict, read_meta
    from workbench.ml.lora import load_adapter, load_lora_model, read_adapter

    run = run_inline("finetune.lora", base_options(registered_tiny_model, demo_instructions,
                                                   max_steps=16, eval_every=8))
    val = run.metrics("val_loss")
    assert len(val) == 3  # before training, then every 8 steps
    assert val[-1] < 0.8 * val[0], val
    assert len(run.metrics("loss")) == 16
    assert any(e["type"] == "progress" and e["unit"] == "step" and e["total"] == 16 for e in run.events)

    store = Store()
    adapter = store.find_artifact(run.result["adapter"])
    merged = store.find_artifact(run.result["model"])
    base = store.find_artifact(registered_tiny_model)
    data = store.find_artifact(demo_instructions)
    assert adapter.kind == "adapter" and set(adapter.parents) == {base.id, data.id}
    assert merged.kind == "model" and set(merged.parents) == {base.id, adapter.id, data.id}

    # The adapter alone: only LoRA tensors, much smaller than the model, with its base and style.
    settings, adapter_sd, cfg = read_adapter(adapter.path)
    assert adapter_sd and all("lora_" in k for k in adapter_sd)
    assert adapter.size_bytes < 0.25 * (base.path / "model.safetensors").stat().st_size
    assert cfg["base_model"] == base.id and cfg["prompt_style"]["name"] == "chatml"
    assert read_meta(merged.path)["prompt_style"]["name"] == "chatml"

    # Only adapter parameters changed: every weight outside the adapted layers is bit-identical,
    # and each adapted weight moved by exactly the adapter's low-rank product.
    base_sd, merged_sd = load_state_dict(base.path), load_state_dict(merged.path)
    assert base_sd.keys() == merged_sd.keys()
    scale = settings.alpha / settings.r
    adapted = 0
    for key, w in base_sd.items():
        prefix = key.rsplit(".", 1)[0]
        a, b = adapter_sd.get(f"{prefix}.lora_A"), adapter_sd.get(f"{prefix}.lora_B")
        if a is None or not key.endswith(".weight"):
            assert torch.equal(w, merged_sd[key]), key
            continue
        adapted += 1
        delta = merged_sd[key] - w
        assert delta.abs().max() > 0, key
        if "qkv" not in key:  # qkv packs q/k/v adapters into one product; checked through logits below
            assert torch.allclose(delta, (b @ a) * scale, atol=1e-6), key
    assert adapted == 2 * 4 + 1  # qkv and the three MLP layers of both blocks, and the head

    # The merged model's logits equal base + adapter.
    x = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with_adapter = load_lora_model(base.path, settings).eval()
    load_adapter(with_adapter, load_file(str(adapter.path / "adapter.safetensors")))
    with torch.no_grad():
        expected = with_adapter(x)
        got = load_model(merged.path)(x)
        plain = load_model(base.path)(x)
    assert (got - expected).abs().max() < 1e-5
    assert (got - plain).abs().max() > 1e-3  # and the adapter really changed the model


def test_prompt_style_is_stored_with_adapter_and_model(tmp_path, demo_instructions):
    from workbench.ml.checkpoint import read_meta

    # Alpaca's preamble alone is ~100 tokens with the tiny tokenizer: give the model room for it.
    model_dir = make_tiny_model(tmp_path / "wide-context", block_size=256)
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model_dir, staged)
    model = ctx.register("model", staged, name="tiny-256").id
    run = run_inline("finetune.lora", base_options(model, demo_instructions, max_steps=1,
                                                   prompt_style="alpaca", name="tiny-alpaca"))
    store = Store()
    merged = store.find_artifact("tiny-alpaca", ("model",))
    style = read_meta(merged.path)["prompt_style"]
    assert style["name"] == "alpaca" and "### Instruction:" in style["chat_template"]
    cfg = json.loads((store.find_artifact(run.result["adapter"]).path / "adapter_config.json").read_text())
    assert cfg["prompt_style"] == style


@pytest.mark.slow
def test_cancel_and_resume_through_the_cli_matches_an_uninterrupted_run(registered_tiny_model, demo_instructions):
    args = ["finetune", "lora", registered_tiny_model, demo_instructions, "--rank", "4", "--alpha", "8",
            "--targets", "query,value,mlp", "--lr", "3e-3", "--warmup-steps", "2", "--batch-size", "4",
            "--micro-batch-size", "2", "--epochs", "3", "--dropout", "0.1", "--eval-every", "20",
            "--checkpoint-every", "5", "--device", "cpu", "--precision", "32-true", "--seed", "3"]
    whole = run_cli(*args, "--json")
    assert whole.returncode == 0, whole.stderr
    whole_run = json.loads(whole.stdout)["run_id"]

    started = run_cli(*args, "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    store = Store()
    events_path = store.get_run(run_id).run_dir / "events.jsonl"
    wait_for(lambda: any(e["type"] == "checkpoint" for e in read_events(events_path)), 120, "a checkpoint")
    cancel = run_cli("runs", "cancel", run_id)
    assert cancel.returncode == 0, cancel.stderr
    # The worker writes the cancelled event before the run's row: wait for the row.
    wait_for(lambda: store.get_run(run_id).status == "cancelled", 120, "the cancel")
    cancelled = [e for e in read_events(events_path) if e["type"] == "checkpoint"][-1]
    assert any(e["type"] == "cancelled" for e in read_events(events_path))

    resumed = run_cli("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "done"

    def losses(rid: str, name: str) -> dict[int, float]:
        return {e["step"]: e["values"][name] for e in read_events(store.get_run(rid).run_dir / "events.jsonl")
                if e["type"] == "metric" and name in e["values"]}

    whole_loss, resumed_loss = losses(whole_run, "loss"), losses(run_id, "loss")
    total = max(whole_loss)
    assert 0 < cancelled["step"] < total  # it really stopped part-way
    assert sorted(resumed_loss) == sorted(whole_loss)
    for step in whole_loss:
        assert abs(whole_loss[step] - resumed_loss[step]) < 1e-4, step
    whole_val, resumed_val = losses(whole_run, "val_loss"), losses(run_id, "val_loss")
    assert abs(whole_val[total] - resumed_val[total]) < 1e-4


def test_wrong_dataset_type_is_refused_before_a_run_exists(registered_tiny_model):
    ref = register_dataset("pretrain", [{"text": "hello"}], [{"text": "bye"}])
    result = run_cli("finetune", "lora", registered_tiny_model, ref)
    assert result.returncode == 2
    assert "holds 'pretrain' data, but finetune lora needs 'instruction' data" in result.stderr
    assert Store().list_runs() == []


def test_rows_without_messages_are_named_by_file_and_line(registered_tiny_model):
    good = demo_rows("train", 2)
    bad = [*good, {"instruction": "Say hi", "output": "hi"}]
    ref = register_dataset("instruction", bad, good)
    with pytest.raises(UserError, match=r"train\.jsonl:3: .*'messages'.*raw Alpaca"):
        run_inline("finetune.lora", {"model": registered_tiny_model, "dataset": ref, "device": "cpu"})
    no_answer = [*good, {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}]
    ref = register_dataset("instruction", no_answer, good)
    result = run_cli("finetune", "lora", registered_tiny_model, ref)
    assert result.returncode == 2 and "train.jsonl:3: the last message must be the assistant's answer" in result.stderr


def test_example_longer_than_the_context_fails_before_training(registered_tiny_model):
    good = demo_rows("train", 4)
    long = {"messages": [{"role": "user", "content": "tell me a story " * 40}, {"role": "assistant", "content": "no"}]}
    ref = register_dataset("instruction", good, [good[0], long])
    with pytest.raises(UserError, match=r"val\.jsonl:2 is \d+ tokens long, more than the model's context of 128"):
        run_inline("finetune.lora", {"model": registered_tiny_model, "dataset": ref, "device": "cpu"})
    (run,) = Store().list_runs()
    events = read_events(run.run_dir / "events.jsonl")
    assert not any(e["type"] in ("metric", "checkpoint") for e in events)  # not a single step was taken
    assert Store().list_artifacts("adapter") == []


def test_qlora_without_cuda_is_a_clear_error(registered_tiny_model, demo_instructions):
    result = run_cli("finetune", "lora", registered_tiny_model, demo_instructions, "--quantize", "nf4")
    assert result.returncode == 2
    assert "QLoRA" in result.stderr and ("CUDA" in result.stderr or "bitsandbytes" in result.stderr)
    assert Store().list_runs() == []



def test_a_bf16_mixed_run_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(registered_tiny_model,
                                                                                     demo_instructions):
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    options = base_options(registered_tiny_model, demo_instructions, precision="bf16-mixed", lr=3e-3,
                           batch_size=8, micro_batch_size=4, max_steps=4, checkpoint_every=2, eval_every=4,
                           eval_batches=2, grad_clip=0.5, dropout=0.1)
    assert_resumes_exactly("finetune.lora", options)


def test_old_option_names_of_a_recorded_run_still_read_as_the_same_run(registered_tiny_model,
                                                                       demo_instructions, capfd):
    """run.json of a run created before the rename: --batch-size 4 --grad-accum 2 was 4 examples
    per forward pass and 2 passes per step, so 8 per step in micro-batches of 4."""
    from workbench_finetune.stage import LoraOptions

    from workbench.options import parse_options

    old = {"model": registered_tiny_model, "dataset": demo_instructions, "batch_size": 4, "grad_accum": 2,
           "eval_interval": 9, "checkpoint_interval": 3, "lr": 1e-3}
    options = parse_options(LoraOptions, old)
    assert (options.batch_size, options.micro_batch_size, options.eval_every, options.checkpoint_every) == (8, 4, 9, 3)
    warnings = capfd.readouterr().err
    assert "--batch-size 4 --grad-accum 2 now reads --batch-size 8 --micro-batch-size 4" in warnings
    assert "--eval-interval is now --eval-every" in warnings
    with pytest.raises(UserError, match="--grad-accum and --micro-batch-size were both given"):
        parse_options(LoraOptions, {**old, "micro_batch_size": 2})


def test_a_run_recorded_before_the_rename_resumes_through_the_cli(registered_tiny_model, demo_instructions):
    """A cancelled run whose run.json speaks the old vocabulary (--batch-size 4 --grad-accum 2,
    --eval-interval, --checkpoint-interval) resumes, and trains as the same run under the new names."""
    import shutil as sh

    from tests.stages.resume import step_values
    from workbench.runs import create_run

    new = base_options(registered_tiny_model, demo_instructions, batch_size=8, micro_batch_size=4, max_steps=4,
                       eval_every=4, checkpoint_every=2, eval_batches=2)
    whole = run_inline("finetune.lora", new)
    checkpoint = next(e for e in whole.events if e["type"] == "checkpoint" and e["step"] == 2)

    store = Store()
    run = create_run("finetune.lora", new, store)
    spec = json.loads((run.run_dir / "run.json").read_text())
    options = spec["options"]
    del options["micro_batch_size"], options["grad_clip"]
    options.update(batch_size=4, grad_accum=2)
    for old, name in (("eval_interval", "eval_every"), ("checkpoint_interval", "checkpoint_every")):
        options[old] = options.pop(name)
    (run.run_dir / "run.json").write_text(json.dumps(spec))
    (run.run_dir / "checkpoints").mkdir(exist_ok=True)
    kept = sh.copy(checkpoint["path"], run.run_dir / "checkpoints")
    store.update_run(run.id, status="cancelled", checkpoint=str(kept))

    resumed = run_cli("runs", "resume", run.id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "done"
    after = {e["step"]: e["values"]["loss"] for e in read_events(run.run_dir / "events.jsonl")
             if e["type"] == "metric" and "loss" in e["values"]}
    assert sorted(after) == [3, 4]
    for step, loss in after.items():
        assert loss == pytest.approx(step_values(whole, "loss")[step], abs=1e-5)
    log = (run.run_dir / "stderr.log").read_text()
    assert "--batch-size 4 --grad-accum 2 now reads --batch-size 8 --micro-batch-size 4" in log


def text_loss(model_dir, texts: list[str], length: int = 64) -> float:
    """Mean next-token loss of a model on plain text, in windows of `length` tokens."""
    from workbench.ml.checkpoint import load_model, load_tokenizer

    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    ids = torch.cat([tok.encode(t, eos=True) for t in texts]).long()
    rows = ids[: len(ids) // (length + 1) * (length + 1)].view(-1, length + 1)
    with torch.no_grad():
        logits = model(rows[:, :-1])
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()))


def test_replay_holds_the_language_model_on_its_text_and_resumes_exactly(registered_tiny_model, demo_instructions):
    from workbench_data.demo import pretrain_records

    texts = [r.value for r in pretrain_records(seed=0, n_chars=60_000)]
    corpus = register_dataset("pretrain", [{"text": t} for t in texts[:-20]], [{"text": t} for t in texts[-20:]],
                              name="corpus")
    options = base_options(registered_tiny_model, demo_instructions, max_steps=12, eval_every=12,
                           checkpoint_every=6)
    plain = run_inline("finetune.lora", options)
    replayed, _ = assert_resumes_exactly("finetune.lora", {**options, "replay": corpus, "replay_windows": 2,
                                                           "replay_length": 64})

    held_out = texts[-20:]  # text of the same kind that replay never drew from
    base = Store().find_artifact(registered_tiny_model).path
    (plain_model,), (replay_model,) = plain.artifacts("model"), replayed.artifacts("model")
    losses = {name: text_loss(path, held_out) for name, path in
              (("base", base), ("plain", plain_model.path), ("replay", replay_model.path))}
    assert losses["replay"] < losses["plain"] - 0.1, losses
    assert losses["replay"] < losses["base"], losses

    val = [e["values"]["val_loss"] for e in replayed.events if e["type"] == "metric" and "val_loss" in e["values"]]
    assert val[-1] < val[0]  # the task is still learned
    steps = [e["values"] for e in replayed.events if e["type"] == "metric" and "replay_loss" in e["values"]]
    assert len(steps) == 12 and all("task_loss" in v for v in steps)
    assert corpus in replay_model.parents and corpus in replayed.artifacts("adapter")[0].parents


def test_replay_of_a_dataset_that_is_not_pretraining_text_is_refused(registered_tiny_model, demo_instructions):
    result = run_cli("finetune", "lora", registered_tiny_model, demo_instructions, "--replay", demo_instructions)
    assert result.returncode == 2 and "--replay needs 'pretrain' data" in result.stderr
    too_long = register_dataset("pretrain", [{"text": "hello world"}], [{"text": "bye"}], name="short")
    result = run_cli("finetune", "lora", registered_tiny_model, demo_instructions, "--replay", too_long,
                     "--replay-length", "4096")
    assert result.returncode == 2 and "--replay-length 4096 is longer than the model's context of 128" in result.stderr
    assert Store().list_runs() == []
