"""`workbench prune`: structured pruning of a tiny LitGPT model trained here on the demo corpus.

The model is pretrained once per module by the real pretraining stage; every test registers a
copy, with its corpus, in its own workspace. Logits are compared against the unpruned model with
the removed units masked in LitGPT itself (a block skipped, `proj` columns zeroed), export goes
through `workbench export` and llama.cpp, and cancel/resume through the real CLI and worker.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import make_tokenizer, run_cli, wait_for
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.events import read_events
from workbench.store import Store
from workbench.testing import run_inline

#: 4 blocks of width 64, 4 query heads in 2 KV groups, 256 MLP channels: a third of the
#: parameters are embeddings, so 0.75 of the whole means about a third of the blocks' weights.
MODEL_CONFIG = """\
n_layer: 4
n_embd: 64
n_head: 4
n_query_groups: 2
intermediate_size: 256
block_size: 64
rotary_percentage: 1.0
parallel_residual: false
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
"""
SEQ = 64


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One torch thread per process: parallel tests on a shared 2-core machine stall each other."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def register_text(train: list[str], val: list[str], name: str = "corpus") -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": "pretrain", "counts": {"train": len(train), "val": len(val)}}))
    for split, docs in (("train", train), ("val", val)):
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    return ctx.register("dataset", staged, name=name).id


def register_model(model_dir: Path, name: str = "trained", parents: tuple[str, ...] = ()) -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model_dir, staged)
    return ctx.register("model", staged, name=name, parents=parents, metadata={"family": "llama"}).id


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    from workbench_data.demo import pretrain_records

    docs = [r.value for r in pretrain_records(seed=0, n_chars=120_000)]
    cut = len(docs) * 9 // 10
    return docs[:cut], docs[cut:]


@pytest.fixture(scope="module")
def trained(corpus: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, pretrained by `workbench pretrain` in a workspace of its own."""

    home = tmp_path_factory.mktemp("pretrain-home")
    config = home / "model.yaml"
    config.write_text(MODEL_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(home))
        torch.set_num_threads(1)
        ctx = Context(Store())
        staged = ctx.staging_dir("tokenizer")
        make_tokenizer(staged, vocab_size=384, text=" ".join(corpus[0][:400]))
        tokenizer = ctx.register("tokenizer", staged, name="bpe").id
        dataset = register_text(*corpus)
        run = run_inline("pretrain", {"dataset": dataset, "tokenizer": tokenizer, "model": str(config),
                                      "max_steps": 150, "max_seq_length": SEQ, "batch_size": 16,
                                      "micro_batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "compile": "off"})
        model = Store().find_artifact(run.result["model"])
        out = tmp_path_factory.mktemp("trained") / "model"
        shutil.copytree(model.path, out)
    return out


@pytest.fixture
def inputs(trained: Path, corpus: tuple[list[str], list[str]]) -> dict[str, str]:
    return {"model": register_model(trained), "calibration": register_text(*corpus)}


def heldout_ppl(model_dir: Path, dataset: str) -> float:
    """Perplexity of the model on the dataset's val split, windows of SEQ tokens, by LitGPT."""
    from workbench.ml.checkpoint import load_model, load_tokenizer

    texts = [json.loads(line)["text"] for line in
             (Store().find_artifact(dataset).path / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = load_tokenizer(model_dir)
    eos = tok.processor.token_to_id("<|endoftext|>")
    ids = [i for t in texts for i in [*tok.encode(t).tolist(), eos]][: 32 * SEQ + 1]
    windows = torch.tensor([ids[i:i + SEQ + 1] for i in range(0, len(ids) - SEQ, SEQ)])
    model = load_model(model_dir)
    with torch.no_grad():
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1))
    return math.exp(float(loss))


def test_stage_module_imports_nothing_heavy() -> None:
    code = ("import sys, workbench_prune.stage; "
            "print(sorted(m for m in ('torch', 'litgpt', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pruned_logits_equal_the_original_with_the_same_units_masked(inputs: dict[str, str]) -> None:
    from litgpt import GPT

    from workbench.ml.checkpoint import load_config, load_model

    run = run_inline("prune", {**inputs, "target": 0.4, "method": ["blocks", "channels", "heads"], "heal": "none"})
    store = Store()
    pruned = store.find_artifact(run.result["model"])
    source = store.find_artifact(inputs["model"])
    meta = pruned.metadata["prune"]
    removed_blocks = meta["removed_blocks"]
    groups = {int(k): v for k, v in meta["removed_groups"].items()}
    channels = {int(k): v for k, v in meta["removed_channels"].items()}
    # Every kind of unit went, and the config says so.
    assert len(removed_blocks) == 1 and meta["groups_per_layer"] == 1 and meta["channels_per_layer"] > 0
    config = load_config(pruned.path)
    assert (config.n_layer, config.n_query_groups, config.n_head, config.head_size) == (3, 1, 2, 16)
    assert config.intermediate_size == 256 - meta["channels_per_layer"]
    assert all(len(v) == meta["channels_per_layer"] for v in channels.values())
    assert sorted(channels) == sorted(set(range(4)) - set(removed_blocks))
    assert {p for p in pruned.parents} == {inputs["model"], inputs["calibration"]}

    ids = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    original = load_model(source.path)
    hs, q_per_kv = original.config.head_size, original.config.n_head // original.config.n_query_groups
    with torch.no_grad():
        for i, block in enumerate(original.transformer.h):
            if i in removed_blocks:
                block.forward = lambda x, *args, **kwargs: x  # the block adds nothing to the stream
                continue
            block.mlp.proj.weight[:, channels[i]] = 0
            for g in groups[i]:  # the group's query heads no longer reach the output
                block.attn.proj.weight[:, g * q_per_kv * hs:(g + 1) * q_per_kv * hs] = 0
        masked = original(ids)
        ours = load_model(pruned.path)(ids)
    assert isinstance(load_model(pruned.path), GPT)
    torch.testing.assert_close(ours, masked, rtol=0, atol=1e-5)
    params = sum(t.numel() for t in load_model(pruned.path).state_dict().values())
    assert run.result["params"] == params and abs(params / run.result["measured"][0]["params"] - 0.4) < 0.05


def test_healing_keeps_perplexity_near_the_original_and_beats_the_unhealed_cut(inputs: dict[str, str]) -> None:
    run = run_inline("prune", {**inputs, "target": 0.75, "heal": "full", "max_steps": 60, "batch_size": 8,
                               "max_seq_length": SEQ, "lr": 1e-3, "eval_every": 30, "speed": True})
    store = Store()
    pruned = store.find_artifact(run.result["model"])
    source = store.find_artifact(inputs["model"])
    original_ppl = heldout_ppl(source.path, inputs["calibration"])
    healed_ppl = heldout_ppl(pruned.path, inputs["calibration"])
    unhealed = run.result["unhealed_perplexity"]
    assert abs(run.result["kept"] - 0.75) < 0.03
    assert healed_ppl < unhealed, (healed_ppl, unhealed)
    assert healed_ppl <= 1.15 * original_ppl, (healed_ppl, original_ppl)
    # The stage's own figures agree with an independent LitGPT pass on the same text.
    assert run.result["source_perplexity"] == pytest.approx(original_ppl, rel=0.1)
    table = run.result["tables"][0]
    labels = [r[0] for r in table["rows"]]
    assert labels[:3] == ["parameters", "weights file", "held-out perplexity"]
    assert "Q4_K_M decode tokens/s" in labels
    assert all(m["q4_tokens_per_s"] for i, m in enumerate(run.result["measured"]) if i != 1)
    descs = {e["desc"] for e in run.events if e["type"] == "progress"}
    assert {"measuring importance", "healing (full)", "timing llama.cpp decoding"} <= descs


def test_pruned_model_exports_to_gguf_that_passes_verification(inputs: dict[str, str]) -> None:
    run = run_inline("prune", {**inputs, "target": 0.6, "method": ["blocks", "channels", "heads"], "heal": "none"})
    out = run_cli("export", run.result["model"], "--quant", "f32,q8_0", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    files = {f["quant"]: f for f in json.loads(out.stdout)["result"]["files"]}
    assert files["f32"]["passed"] and files["f32"]["greedy_identical"] and files["q8_0"]["passed"]

    from llama_cpp import Llama

    from workbench.ml.checkpoint import load_config

    config = load_config(Store().find_artifact(run.result["model"]).path)
    llm = Llama(model_path=files["q8_0"]["path"], n_ctx=64, verbose=False)
    try:
        meta = llm.metadata
        shape = (int(meta["llama.block_count"]), int(meta["llama.attention.head_count"]),
                 int(meta["llama.attention.head_count_kv"]), int(meta["llama.feed_forward_length"]))
        assert shape == (config.n_layer, config.n_head, config.n_query_groups, config.intermediate_size)
        assert len(llm.tokenize(b"The quick brown fox")) > 0 and llm("The", max_tokens=4)["choices"]
    finally:
        llm.close()


def test_cancel_and_resume_of_healing_ends_where_an_uninterrupted_run_ends(inputs: dict[str, str]) -> None:
    opts = {"target": 0.75, "heal": "lora", "max_steps": 40, "batch_size": 4, "max_seq_length": 32,
            "eval_every": 20, "checkpoint_every": 10, "dropout": 0.1}
    whole = run_inline("prune", {**inputs, **opts})

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    started = run_cli("prune", inputs["model"], "--calibration", inputs["calibration"], *flags, "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    events_path = Path(json.loads(started.stdout)["run_dir"]) / "events.jsonl"

    def step_reached() -> bool:
        steps = [e["step"] for e in read_events(events_path) if e["type"] == "metric" and "loss" in e["values"]]
        return bool(steps) and steps[-1] >= 3

    wait_for(step_reached, 120, "a healing step to cancel at")
    assert run_cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: any(e["type"] == "cancelled" for e in read_events(events_path)), 120, "the cancel")
    stopped_at = max(e["step"] for e in read_events(events_path) if e["type"] == "checkpoint")
    assert 3 <= stopped_at < 40

    resumed = run_cli("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    events = read_events(events_path)
    assert any(e["type"] == "log" and f"resumed at step {stopped_at}" in e["message"] for e in events)
    losses = {e["step"]: e["values"]["loss"] for e in events if e["type"] == "metric" and "loss" in e["values"]}
    whole_losses = whole.metrics("loss")
    assert len(whole_losses) == 40 and set(range(1, 41)) <= set(losses)
    assert [losses[s] for s in range(1, 41)] == pytest.approx(whole_losses, abs=1e-4)
    result = json.loads(resumed.stdout)["result"]
    assert result["perplexity"] == pytest.approx(whole.result["perplexity"], rel=1e-4)


@pytest.mark.parametrize("heal", ["lora", "full"])
def test_a_bf16_mixed_healing_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(
        inputs: dict[str, str], heal: str) -> None:
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    assert_resumes_exactly("prune", {
        **inputs, "target": 0.75, "heal": heal, "max_steps": 4, "batch_size": 4, "micro_batch_size": 2,
        "max_seq_length": 32, "precision": "bf16-mixed", "eval_every": 4, "eval_batches": 2, "checkpoint_every": 2,
        "dropout": 0.1,
    })


def test_calibration_defaults_to_the_text_the_model_was_trained_on(trained: Path, inputs: dict[str, str]) -> None:
    model = register_model(trained, "with-lineage", parents=(inputs["calibration"],))
    run = run_inline("prune", {"model": model, "target": 0.9, "heal": "none"})
    pruned = Store().find_artifact(run.result["model"])
    assert pruned.metadata["prune"]["calibration"] == inputs["calibration"]
    assert set(pruned.parents) == {model, inputs["calibration"]}


@pytest.mark.parametrize("target", ["0", "1.5", "nan", "-0.2"])
def test_bad_target_is_refused_before_a_run_exists(inputs: dict[str, str], workspace: Path, target: str) -> None:
    out = run_cli("prune", inputs["model"], "--calibration", inputs["calibration"], "--target", target)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "target" in out.stderr
    runs = workspace / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_unreachable_target_and_missing_calibration_are_one_line_errors(inputs: dict[str, str]) -> None:
    out = run_cli("prune", inputs["model"], "--calibration", inputs["calibration"], "--target", "0.3",
                  "--method", "heads")
    assert out.returncode == 2 and "cannot be reached with --method heads" in out.stderr, out.stderr
    out = run_cli("prune", inputs["model"])
    assert out.returncode == 2 and "--calibration" in out.stderr, out.stderr
