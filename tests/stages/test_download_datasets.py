"""`workbench download --dataset`: the real huggingface_hub client against the Hub look-alike,
with Parquet written by pyarrow, ending in dataset artifacts that `finetune lora` and `dpo` take."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.hubserver import HubServer
from tests.stages.conftest import MiB
from tests.stages.test_download import download, events, only_artifact, refused
from workbench.context import Context
from workbench.options import parse_options
from workbench.stages import get_stage
from workbench.store import Store

NOUNS = ["fox", "dog", "cat", "bird", "tree", "lake", "road", "house", "river", "stone", "cloud", "apple",
         "bread", "chair", "clock", "door", "field", "garden", "hill", "island"]


def parquet(rows: list[dict[str, Any]], **kwargs: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, **kwargs)
    return buf.getvalue()


def alpaca_rows(nouns: list[str]) -> list[dict[str, str]]:
    return [{"instruction": f"Describe the {n}.", "input": "" if i % 2 else f"Be brief about the {n}.",
             "output": f"The {n} is a fine {n}, seen every day."} for i, n in enumerate(nouns)]


def chat_rows(nouns: list[str]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": f"What is a {n}?"},
                          {"role": "assistant", "content": f"A {n} is a thing."}], "id": i}
            for i, n in enumerate(nouns)]


def sharegpt_rows(nouns: list[str]) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": f"Name a {n}."},
                               {"from": "gpt", "value": f"This {n}."}]} for n in nouns]


def ultrafeedback_rows(nouns: list[str]) -> list[dict[str, Any]]:
    """The shape of HuggingFaceH4/ultrafeedback_binarized: answers are whole conversations."""
    out = []
    for i, n in enumerate(nouns):
        prompt = f"Tell me about the {n}."
        chosen = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"the {n} is calm."}]
        rejected = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"THE {n.upper()}!!!"}]
        out.append({"prompt": prompt, "prompt_id": f"{i:04d}", "chosen": chosen, "rejected": rejected,
                    "messages": chosen, "score_chosen": 8.0, "score_rejected": 2.0})
    return out


ULTRA_CARD = """---
license: mit
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
  - split: train_sft
    path: data/train_sft-*
---
# ultrafeedback, tiny
"""


@pytest.fixture(scope="module")
def hub_data():
    server = HubServer().start()
    commits: dict[str, str] = {}
    commits["alpaca"] = server.add_repo("tiny/alpaca", {
        "README.md": "---\nlicense: cc-by-nc-4.0\n---\n# alpaca, tiny\n",
        "data/train-00000-of-00001.parquet": parquet(alpaca_rows(NOUNS[:16])),
        "data/validation-00000-of-00001.parquet": parquet(alpaca_rows(NOUNS[16:])),
    }, repo_type="dataset")
    commits["chat"] = server.add_repo("tiny/chat", {
        "messages/train-00000-of-00001.parquet": parquet(chat_rows(NOUNS)),
        "messages/test-00000-of-00001.parquet": parquet(chat_rows(NOUNS[:3])),
        "sharegpt/train.jsonl": "".join(json.dumps(r) + "\n" for r in sharegpt_rows(NOUNS)),
    }, repo_type="dataset")
    commits["ultra"] = server.add_repo("tiny/ultrafeedback", {
        "README.md": ULTRA_CARD,
        "data/train_prefs-00000-of-00001.parquet": parquet(ultrafeedback_rows(NOUNS[:16])),
        "data/test_prefs-00000-of-00001.parquet": parquet(ultrafeedback_rows(NOUNS[16:])),
        "data/train_sft-00000-of-00001.parquet": parquet(chat_rows(NOUNS)),
    }, repo_type="dataset")
    qa = "question,context,answer,output\n" + "".join(
        f"Which animal is quick?,The quick brown {n}.,The {n}.,unused\n" for n in NOUNS)
    server.add_repo("tiny/qa", {"qa.csv": qa}, repo_type="dataset")
    script = "import datasets\nraise SystemExit('loading scripts must never run')\n"
    server.add_repo("tiny/scripted", {"scripted.py": script, "README.md": "# scripted\n"}, repo_type="dataset")
    server.add_repo("tiny/converted", {"converted.py": script}, repo_type="dataset")
    commits["converted"] = server.add_repo("tiny/converted", {
        "default/train/0000.parquet": parquet(alpaca_rows(NOUNS))}, ref="refs/convert/parquet", repo_type="dataset")
    # Over 10 MiB, huggingface_hub's write chunk, so a cut transfer leaves bytes to resume from:
    # incompressible answers, written without compression.
    big = [{"instruction": f"Recite block {i}.", "output": os.urandom(48 << 10).hex()} for i in range(128)]
    commits["big"] = server.add_repo("tiny/big-data", {"train.parquet": parquet(big, compression="none")},
                                     repo_type="dataset")
    # A model repository under the same id as a dataset: the namespaces are apart, as on the Hub.
    server.add_repo("tiny/alpaca", {"README.md": "# a model, not the dataset\n"})
    server.commits = commits  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def hub(hub_data: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.setenv("HF_ENDPOINT", hub_data.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_data.log.clear()
    hub_data.drops.clear()
    return hub_data


def rows(art: dict[str, Any], split: str) -> list[dict[str, Any]]:
    path = Path(art["path"]) / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def accepted_by(stage: str, model: str, dataset: str) -> None:
    """The stage's own input checks, exactly as the CLI runs them before a run exists."""
    cls = get_stage(stage)
    cls().validate(parse_options(cls.Options, {"model": model, "dataset": dataset}, stage=stage), Context(Store()))


def cache_dataset(workspace: Path, repo_id: str) -> Path:
    return workspace / "hf" / "hub" / ("datasets--" + repo_id.replace("/", "--"))


def test_alpaca_parquet_becomes_an_instruction_dataset_for_lora(hub, workspace, registered_tiny_model):
    proc, out = download("--dataset", "tiny/alpaca")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["kind"] == "dataset" and art["name"] == "tiny/alpaca"
    meta = art["metadata"]
    assert meta["type"] == "instruction" and meta["license"] == "cc-by-nc-4.0"
    assert (meta["hf_repo_id"], meta["hf_repo_type"], meta["hf_revision"]) == (
        "tiny/alpaca", "dataset", hub.commits["alpaca"])
    assert (meta["hf_config"], meta["hf_split"], meta["hf_val_split"]) == ("default", "train", "validation")
    # The published validation split is the held-out set; rows keep the repository's order.
    train, val = rows(art, "train"), rows(art, "val")
    assert len(train) == 16 and len(val) == 4
    assert train[0]["messages"] == [{"role": "user", "content": "Describe the fox.\n\nBe brief about the fox."},
                                    {"role": "assistant", "content": "The fox is a fine fox, seen every day."}]
    assert train[1]["messages"][0] == {"role": "user", "content": "Describe the dog."}
    assert val[0]["messages"][0]["content"] == "Describe the field.\n\nBe brief about the field."
    card = json.loads((Path(art["path"]) / "card.json").read_text())
    assert card["origin"]["hf_revision"] == hub.commits["alpaca"] and "tiny/alpaca@" in card["source"]

    # The standard cache, under the dataset namespace; the model of the same id was not touched.
    snapshot = cache_dataset(workspace, "tiny/alpaca") / "snapshots" / hub.commits["alpaca"]
    assert (snapshot / "data" / "train-00000-of-00001.parquet").is_file()
    assert not (workspace / "hf" / "hub" / "models--tiny--alpaca").exists()
    progress = [e for e in events(workspace, out["run_id"]) if e["type"] == "progress" and e["unit"] == "B"]
    assert progress and progress[-1]["step"] == progress[-1]["total"] > 0

    accepted_by("finetune.lora", registered_tiny_model, art["id"])
    with pytest.raises(Exception, match="has type 'instruction', but dpo needs a preference dataset"):
        accepted_by("dpo", registered_tiny_model, art["id"])


def test_chat_messages_and_sharegpt_subsets(hub, registered_tiny_model):
    msg = refused("--dataset", "tiny/chat")
    assert "tiny/chat has 2 configs (messages, sharegpt); pick one with --subset NAME" in msg
    msg = refused("--dataset", "tiny/chat", "--subset", "chat")
    assert "no config 'chat'; its configs are: messages, sharegpt" in msg
    msg = refused("--dataset", "tiny/chat", "--subset", "messages", "--split", "validation")
    assert "has no split 'validation'; its splits are: test, train" in msg
    assert not any(e.file and e.file.endswith(".parquet") for e in hub.log)  # refused before any data moved

    proc, out = download("--dataset", "tiny/chat", "--subset", "messages", "--name", "chat")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["type"] == "instruction" and art["metadata"]["hf_split"] == "train"
    got = rows(art, "train") + rows(art, "val")
    assert len(got) == 20 and {tuple(m["role"] for m in r["messages"]) for r in got} == {
        ("system", "user", "assistant")}
    assert {"fox", "island"} <= {r["messages"][1]["content"].split()[-1].rstrip("?") for r in got}
    fetched = {e.file for e in hub.log if e.method == "GET" and e.file}
    assert "messages/test-00000-of-00001.parquet" not in fetched and "sharegpt/train.jsonl" not in fetched
    accepted_by("finetune.lora", registered_tiny_model, art["id"])

    proc, out = download("--dataset", "tiny/chat", "--subset", "sharegpt", "--split", "train", "--name", "gpt")
    assert proc.returncode == 0, proc.stderr
    first = rows(only_artifact(out), "train")[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[0]["content"].startswith("Name a ")


def test_binarized_preferences_become_a_preference_dataset_for_dpo(hub, registered_tiny_model):
    msg = refused("--dataset", "tiny/ultrafeedback")
    assert "has the splits test_prefs, train_prefs, train_sft; pick one with --split NAME" in msg

    proc, out = download("--dataset", "tiny/ultrafeedback", "--split", "train_prefs")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["type"] == "preference" and art["metadata"]["license"] == "mit"
    got = rows(art, "train") + rows(art, "val")
    assert len(got) == 16
    fox = next(r for r in got if "fox" in r["chosen"])
    assert fox == {"messages": [{"role": "user", "content": "Tell me about the fox."}],
                   "chosen": "the fox is calm.", "rejected": "THE FOX!!!"}
    accepted_by("dpo", registered_tiny_model, art["id"])


def test_column_mapping_and_a_wrong_column_name(hub, registered_tiny_model):
    msg = refused("--dataset", "tiny/alpaca", "--output-field", "answer")
    assert msg.count("\n") == 0
    assert '--output-field names column "answer"' in msg and "its columns are: instruction, input, output" in msg

    # The same shape under other names, from a CSV file.
    proc, out = download("--dataset", "tiny/qa", "--instruction-field", "question", "--input-field", "context",
                         "--output-field", "answer")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["type"] == "instruction"
    assert rows(art, "train")[0]["messages"] == [
        {"role": "user", "content": "Which animal is quick?\n\nThe quick brown fox."},
        {"role": "assistant", "content": "The fox."}]
    accepted_by("finetune.lora", registered_tiny_model, art["id"])


def test_resume_after_a_dropped_transfer_and_offline_from_the_cache(hub, workspace):
    data = hub.datasets["tiny/big-data"].commits[hub.commits["big"]]["train.parquet"]
    assert len(data) > 12 * MiB
    hub.drop_once("tiny/big-data", "train.parquet", after_bytes=11 * MiB)
    proc, out = download("--dataset", "tiny/big-data", "--retries", "0")
    assert proc.returncode == 1 and "broke off" in out["error"], proc.stderr
    partial = list((cache_dataset(workspace, "tiny/big-data") / "blobs").glob("*.incomplete"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert kept >= 10 * MiB

    proc, out = download("--dataset", "tiny/big-data")
    assert proc.returncode == 0, proc.stderr
    first, second = hub.requests_for("train.parquet")
    assert first.sent == 11 * MiB and second.range == f"bytes={kept}-" and second.sent == len(data) - kept
    art = only_artifact(out)
    assert len(rows(art, "train")) + len(rows(art, "val")) == 128

    hub.log.clear()
    proc, out = download("--dataset", "tiny/big-data", "--name", "offline", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert hub.log == []  # not one request
    offline = only_artifact(out)
    assert offline["metadata"]["hf_revision"] == hub.commits["big"]
    assert rows(offline, "train") == rows(art, "train")

    msg = refused("--dataset", "tiny/chat", "--subset", "messages", env={"HF_HUB_OFFLINE": "1"})
    assert "not in the Hugging Face cache" in msg


def test_loading_scripts_are_never_run(hub, workspace):
    msg = refused("--dataset", "tiny/scripted")
    assert msg.count("\n") == 0
    assert "tiny/scripted is built by a loading script (scripted.py), which workbench never runs" in msg
    assert "no Parquet conversion" in msg
    assert not hub.requests_for("scripted.py")

    # The Hub's own Parquet conversion of a scripted dataset is data, not code.
    proc, out = download("--dataset", "tiny/converted")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["hf_revision"] == hub.commits["converted"] and art["metadata"]["type"] == "instruction"
    assert not hub.requests_for("converted.py")


def test_models_rm_hf_cache_removes_the_dataset_not_the_model_of_the_same_id(hub, workspace):
    proc, out = download("--dataset", "tiny/alpaca")
    assert proc.returncode == 0, proc.stderr
    fetch_model_card = "from huggingface_hub import hf_hub_download; hf_hub_download('tiny/alpaca', 'README.md')"
    subprocess.run([sys.executable, "-c", fetch_model_card], check=True, env=os.environ.copy())
    model_cache = workspace / "hf" / "hub" / "models--tiny--alpaca"
    assert model_cache.is_dir()
    proc = run_cli("models", "rm", only_artifact(out)["id"], "--hf-cache", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not cache_dataset(workspace, "tiny/alpaca").exists() or not any(
        (cache_dataset(workspace, "tiny/alpaca") / "snapshots").iterdir())
    assert (model_cache / "snapshots").is_dir() and any((model_cache / "snapshots").iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (("--dataset", "tiny/alpaca", "--gguf-file", "Q4_K_M"), "--gguf-file applies to models"),
    (("tiny/llama", "--split", "train"), "--split applies to datasets; add --dataset"),
    (("tiny/llama", "--instruction-field", "q"), "--instruction-field applies to datasets"),
    (("--dataset", "tiny/alpaca", "--dtype", "float16"), "--dtype applies to models"),
])
def test_contradictory_dataset_options_are_refused_before_a_run(args, message, workspace):
    proc = run_cli("download", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
