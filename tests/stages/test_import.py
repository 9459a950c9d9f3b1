"""`workbench models import`: models on disk in every supported format, checked against the
reference implementations (transformers and PEFT for the math, llama.cpp for GGUF files)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model, make_tokenizer
from tests.stages.conftest import EvilPickle, hf_repo_files

FAST = ("--threads", "1", "--temperature", "0", "--max-tokens", "6")
IDS = [[1, 5, 9, 42, 7, 3, 100, 2]]


def artifacts(kind: str | None = None) -> list[Any]:
    from workbench.store import Store

    return Store().list_artifacts(kind)


def leftovers(home: Path) -> list[str]:
    """Anything an import may have written: artifacts, staging directories, files."""
    return sorted(str(p.relative_to(home)) for d in ("models", "exports") if (home / d).exists()
                  for p in (home / d).rglob("*"))


def imported(cli: Any, *args: str) -> Any:
    r = cli("models", "import", *args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done", out
    from workbench.store import Store

    return Store().find_artifact(out["result"]["artifact"])


def lit_logits(model_dir: Path) -> Any:
    import torch

    from workbench.ml.checkpoint import load_model

    with torch.no_grad():
        return load_model(model_dir)(torch.tensor(IDS))


def hf_llama(vocab: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=10000.0, bos_token_id=0, eos_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    """A tiny Llama saved by transformers itself, with a real tokenizer beside it."""
    out = make_tokenizer(tmp_path / "tiny-hf")
    vocab = json.loads((out / "tokenizer.json").read_text())
    hf_llama(len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])).save_pretrained(out)
    return out


# the formats ------------------------------------------------------------------------------------


def test_hf_directory_imports_with_transformers_logits(cli, hf_dir):
    import torch
    from transformers import AutoModelForCausalLM

    art = imported(cli, str(hf_dir), "--name", "tiny-hf")
    assert art.kind == "model" and art.name == "tiny-hf"
    src = art.metadata["source"]
    assert src["path"] == str(hf_dir) and src["format"] == "hf" and src["transfer"] == "converted"
    hashes = {f["name"]: f["sha256"] for f in src["files"]}
    import hashlib

    assert hashes["model.safetensors"] == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()

    ref = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        expected = ref(torch.tensor(IDS)).logits
    got = lit_logits(art.path)
    assert (got - expected).abs().max().item() <= 1e-4
    shutil.rmtree(hf_dir)  # the artifact owns its files
    assert (lit_logits(art.path) == got).all()


def test_hf_directory_with_bin_weights_imports_through_the_weights_only_loader(cli, tmp_path):
    src = make_tiny_model(tmp_path / "lit")
    hf_dir = tmp_path / "hf-bin"
    hf_dir.mkdir()
    for name, data in hf_repo_files(src, weights="bin").items():
        (hf_dir / name).write_bytes(data)
    art = imported(cli, str(hf_dir))
    assert art.metadata["weights_format"] == "bin"
    assert (lit_logits(art.path) == lit_logits(src)).all()  # LitGPT → HF → LitGPT is exact


def test_litgpt_checkpoint_imports_and_chats(cli, tmp_path):
    src = make_tiny_model(tmp_path / "lit-out")
    # As `litgpt finetune` leaves it: a pickled state dict, no safetensors, none of our metadata.
    (src / "model.safetensors").unlink()
    (src / "workbench.json").unlink()
    art = imported(cli, str(src))
    assert art.name == "lit-out" and art.metadata["source"]["format"] == "litgpt"
    assert (art.path / "model.safetensors").exists()
    import torch

    reference = make_tiny_model(tmp_path / "again")  # same seed: the same weights
    assert torch.allclose(lit_logits(art.path), lit_logits(reference), atol=0)

    r = cli("chat", art.id, *FAST, input="hello there\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stderr and r.stdout.strip()


def test_gguf_file_imports_hard_linked_and_chats(cli, tmp_path):
    from workbench_export.gguf_writer import write_gguf

    gguf = tmp_path / "tiny-f16.gguf"
    write_gguf(make_tiny_model(tmp_path / "tiny"), gguf, "f16")
    art = imported(cli, str(gguf), "--name", "tiny-gguf")
    assert art.kind == "gguf" and art.path.name == "tiny-f16.gguf"
    assert art.metadata["gguf"]["architecture"] == "llama"
    assert art.metadata["source"]["transfer"] == "hard-linked"
    assert art.path.stat().st_ino == gguf.stat().st_ino
    gguf.unlink()  # the user deletes the original: the workspace keeps its name for the bytes
    r = cli("chat", "tiny-gguf", *FAST, input="hello there\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "llama.cpp" in r.stderr and r.stdout.strip()


def test_peft_lora_adapter_merges_onto_its_base_like_peft_applies_it(cli, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = make_tiny_model(tmp_path / "base")
    base = imported(cli, str(base_dir), "--name", "base")
    # The same model in Hugging Face form, for PEFT to train an adapter on.
    hf_dir = tmp_path / "base-hf"
    hf_dir.mkdir()
    for name, data in hf_repo_files(base_dir).items():
        (hf_dir / name).write_bytes(data)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "k_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; a trained adapter has moved it
                p.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = peft_model(torch.tensor(IDS)).logits

    art = imported(cli, str(tmp_path / "adapter"), "--base", "base", "--name", "tuned")
    [adapter] = artifacts("adapter")
    # The lineage a LoRA finetune leaves: base → adapter → merged model.
    assert art.kind == "model" and art.parents == [base.id, adapter.id] and adapter.parents == [base.id]
    from workbench.ml.lora import read_adapter

    settings, _, _ = read_adapter(adapter.path)  # the layout `finetune lora` writes and reads
    assert settings.r == 4 and settings.targets == ("query", "key", "value", "mlp")
    assert art.metadata["adapter"]["r"] == 4 and art.metadata["source"]["format"] == "peft-lora"
    got, before = lit_logits(art.path), lit_logits(base.path)
    assert (got - before).abs().max().item() > 1e-2  # the adapter does change the model
    assert (got - expected).abs().max().item() <= 1e-4


def test_litgpt_lora_checkpoint_merges_like_litgpt_runs_it(cli, tmp_path):
    import dataclasses

    import torch
    import yaml

    from workbench.ml.lora import LoRASettings, adapter_state_dict, load_lora_model

    base_dir = make_tiny_model(tmp_path / "base")
    base = imported(cli, str(base_dir), "--name", "base")
    lora = load_lora_model(base_dir, LoRASettings(r=4, alpha=8, dropout=0.0, targets=("query", "value", "mlp")))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
        expected = lora.eval()(torch.tensor(IDS))  # LitGPT's own LoRA forward, unmerged
    out = tmp_path / "final"
    out.mkdir()
    # As `litgpt finetune lora` saves it: the adapter under "model", the LoRA config beside it.
    torch.save({"model": adapter_state_dict(lora)}, out / "lit_model.pth.lora")
    (out / "model_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(lora.config)))

    art = imported(cli, str(out), "--base", "base")
    [adapter] = artifacts("adapter")
    assert art.parents == [base.id, adapter.id] and art.metadata["source"]["format"] == "litgpt-lora"
    got = lit_logits(art.path)
    assert (got - lit_logits(base.path)).abs().max().item() > 1e-2
    assert (got - expected).abs().max().item() <= 1e-4


def test_adapter_for_another_shape_is_refused(cli, tmp_path):
    from peft import LoraConfig, get_peft_model

    imported(cli, str(make_tiny_model(tmp_path / "base")), "--name", "base")
    wide = make_tiny_model(tmp_path / "wide", n_embd=128, n_head=4, n_query_groups=2)
    hf_dir = tmp_path / "wide-hf"
    hf_dir.mkdir()
    for name, data in hf_repo_files(wide).items():
        (hf_dir / name).write_bytes(data)
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(hf_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    before = leftovers(Path(os.environ["WORKBENCH_HOME"]))
    r = cli("models", "import", str(tmp_path / "adapter"), "--base", "base")
    assert r.returncode == 2
    assert "does not fit base model" in r.stderr and "q_proj of layer 0" in r.stderr
    assert leftovers(Path(os.environ["WORKBENCH_HOME"])) == before
    r = cli("models", "import", str(tmp_path / "adapter"))
    assert r.returncode == 2 and "--base MODEL" in r.stderr


# bad input -----------------------------------------------------------------------------------------


def test_a_directory_that_is_no_model_is_refused_in_one_line(cli, workspace, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    r = cli("models", "import", str(tmp_path / "notes"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'notes'} is not a model directory: no config.json, model_config.yaml, "
        "adapter_config.json or *.gguf found"]
    assert not (workspace / "runs").exists() and leftovers(workspace) == []


def test_a_truncated_safetensors_file_is_named_and_nothing_is_written(cli, workspace, hf_dir):
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    r = cli("models", "import", str(hf_dir))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {weights.name} in {weights.parent} is truncated: the header says")
    assert not (workspace / "runs").exists() and leftovers(workspace) == []


@pytest.mark.parametrize("where", ["hf-bin", "litgpt-pth"])
def test_a_pickle_with_code_is_never_run(cli, workspace, tmp_path, where):
    import torch

    marker = tmp_path / "pwned"
    src = make_tiny_model(tmp_path / "model")
    if where == "hf-bin":
        for name, data in hf_repo_files(src).items():
            if name != "model.safetensors":
                (tmp_path / "hf" / name).parent.mkdir(exist_ok=True)
                (tmp_path / "hf" / name).write_bytes(data)
        src, bad = tmp_path / "hf", tmp_path / "hf" / "pytorch_model.bin"
    else:
        (src / "model.safetensors").unlink()
        bad = src / "lit_model.pth"
    torch.save({"model": EvilPickle(marker)}, bad)
    r = cli("models", "import", str(src))
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad} holds pickled Python objects besides tensors (os.makedirs)")
    assert not marker.exists()
    assert not (workspace / "runs").exists() and leftovers(workspace) == []


def test_the_worker_loads_pickles_weights_only_too(tmp_path):
    """Behind the opcode scan stands torch's weights-only loader: what slips past is still refused."""
    import torch
    from workbench_import.formats import load_pickled_tensors

    from workbench.errors import UserError

    marker = tmp_path / "pwned"
    torch.save({"model": EvilPickle(marker)}, tmp_path / "lit_model.pth")
    with pytest.raises(UserError, match=r"lit_model\.pth holds pickled Python objects"):
        load_pickled_tensors(tmp_path / "lit_model.pth")
    assert not marker.exists()


def evil_template_model(tmp_path: Path, marker: Path) -> Path:
    """A LitGPT folder whose tokenizer_config.json carries a template that creates `marker` if run."""
    src = make_tiny_model(tmp_path / "evil")
    (src / "workbench.json").unlink()
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    return src


def test_a_malicious_chat_template_is_refused_on_import_before_anything_runs(cli, tmp_path):
    marker = tmp_path / "template-ran"
    r = cli("models", "import", str(evil_template_model(tmp_path, marker)), "--name", "evil")
    assert not marker.exists()
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the sandbox" in lines[0] and "tokenizer_config.json" in lines[0], r.stderr
    from workbench.store import Store

    assert Store().list_artifacts() == [] and Store().list_runs() == []


def test_progress_and_origin_are_in_the_run_events(cli, hf_dir):
    r = cli("models", "import", str(hf_dir), "--detach", "--json")
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    assert cli("runs", "attach", run_id).returncode == 0
    from workbench import locations

    events = [json.loads(line) for line in (locations.run_dir(run_id) / "events.jsonl").read_text().splitlines()]
    descs = {e.get("desc") for e in events if e["type"] == "progress"}
    assert {"hashing model.safetensors", "converting model.safetensors"} <= descs
    assert events[-1]["type"] == "done"


@pytest.mark.parametrize("how", [{"pickle_protocol": 2}, {"pickle_protocol": 4},
                                 {"_use_new_zipfile_serialization": False}])
def test_the_opcode_scan_names_the_callable_in_every_torch_format(tmp_path, how):
    import torch
    from workbench_import.detect import pickled_callables

    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pth", **how)
    torch.save({"model": EvilPickle(tmp_path / "pwned")}, tmp_path / "evil.pth", **how)
    assert "torch._utils._rebuild_tensor_v2" in pickled_callables(tmp_path / "ok.pth")
    assert pickled_callables(tmp_path / "evil.pth") == ["os.makedirs"]


def test_an_architecture_that_cannot_be_converted_is_refused_before_a_run(cli, workspace, hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    r = cli("models", "import", str(hf_dir))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert f"{hf_dir} is a GPT2LMHeadModel model, which workbench cannot convert" in line
    assert not (workspace / "runs").exists()


def test_a_truncated_gguf_is_named_and_nothing_is_written(cli, workspace, tmp_path):
    from tests.stages.conftest import tiny_gguf

    gguf = tiny_gguf(make_tiny_model(tmp_path / "tiny"), tmp_path / "tiny.gguf")
    gguf.write_bytes(gguf.read_bytes()[:-5000])
    r = cli("models", "import", str(gguf))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {gguf.name} in {gguf.parent} is truncated: its header says")
    assert not (workspace / "runs").exists() and leftovers(workspace) == []


def test_a_relative_path_is_recorded_absolute(tmp_path):
    import subprocess
    import sys

    from tests.stages.conftest import tiny_gguf

    tiny_gguf(make_tiny_model(tmp_path / "tiny"), tmp_path / "tiny.gguf")
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "models", "import", "tiny.gguf", "--json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["artifacts"][0]["metadata"]["source"]["path"] == str(tmp_path / "tiny.gguf")
    from workbench import locations

    # A resume from another directory (the TUI, another shell) finds the same file.
    spec = json.loads((locations.run_dir(out["run_id"]) / "run.json").read_text())
    assert spec["options"]["path"] == str(tmp_path / "tiny.gguf")
