"""`workbench download`: the real huggingface_hub client against a local Hub look-alike.

Every download runs the real CLI and worker subprocesses with HF_ENDPOINT pointing at the
server from `conftest.py`, into a per-test HF_HOME and workspace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.stages.conftest import MiB

PROMPT = "The quick brown fox"


def download(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = run_cli("download", *args, "--json", env=env)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    return proc, out


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a download that must be refused as bad input (exit 2); returns the message."""
    proc, out = download(*args, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    return out.get("error") or proc.stderr


def only_artifact(out: dict[str, Any]) -> dict[str, Any]:
    assert out["status"] == "done", out
    (art,) = out["artifacts"]
    return art


def events(workspace: Path, run_id: str) -> list[dict[str, Any]]:
    path = workspace / "runs" / run_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cache_repo(workspace: Path, repo_id: str) -> Path:
    return workspace / "hf" / "hub" / ("models--" + repo_id.replace("/", "--"))


def logits(model_dir: Path) -> Any:
    import torch

    from workbench.ml.checkpoint import load_model, load_tokenizer

    ids = load_tokenizer(model_dir).encode(PROMPT)
    with torch.no_grad():
        return load_model(model_dir)(ids[None])


def greedy(model_dir: Path, n: int = 8) -> str:
    import torch
    from litgpt.generate.base import generate

    from workbench.ml.checkpoint import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    prompt = tokenizer.encode(PROMPT)
    model.max_seq_length = len(prompt) + n
    model.set_kv_cache(batch_size=1)
    torch.manual_seed(0)
    out = generate(model, prompt, len(prompt) + n, temperature=0.0, include_prompt=False)
    return tokenizer.decode(out)


def test_download_converts_llama_to_litgpt_and_generates(hub, hub_models, workspace):
    proc, out = download("tiny/llama")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["kind"] == "model" and art["name"] == "tiny/llama"
    meta = art["metadata"]
    assert meta["hf_repo_id"] == "tiny/llama"
    assert meta["hf_revision"] == hub.commits["llama"] and meta["hf_ref"] == "main"
    assert meta["license"] == "apache-2.0" and meta["architecture"] == "LlamaForCausalLM"

    # The weights are exactly the model the repository was made from: same logits, same text.
    import hashlib

    import torch

    model_dir = Path(art["path"])
    assert torch.allclose(logits(model_dir), logits(hub_models["main"]), atol=1e-6)
    text = greedy(model_dir)
    assert text == greedy(hub_models["main"]) and len(text) > 0

    # Standard Hugging Face cache, shared with other tools; recorded hashes are the files' own.
    snapshot = cache_repo(workspace, "tiny/llama") / "snapshots" / hub.commits["llama"]
    recorded = {f["path"]: f for f in meta["files"]}
    assert set(recorded) == {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                             "README.md", "LICENSE", "model.safetensors"}
    for path, record in recorded.items():
        data = (snapshot / path).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)

    # Safetensors preferred, repository code never fetched.
    fetched = {e.file for e in hub.log if e.method == "GET" and e.file}
    assert "pytorch_model.bin" not in fetched and "modeling_tiny.py" not in fetched

    # The checkpoint is complete for later stages, with the tokenizer's own chat template.
    from workbench.prompts import CHATML, style_for_model

    for name in ("lit_model.pth", "model.safetensors", "model_config.yaml", "tokenizer.json", "LICENSE"):
        assert (model_dir / name).exists(), name
    style = style_for_model(model_dir)
    assert style is not None and style.chat_template == CHATML
    assert style.render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi<|im_end|>")

    # Byte progress for the bar: ends at the total of what was transferred.
    progress = [e for e in events(workspace, out["run_id"]) if e["type"] == "progress" and e["unit"] == "B"]
    total = sum(r["size"] for r in recorded.values())
    assert any(e["step"] == e["total"] == total for e in progress)

    listed = run_cli("models", "ls", "--json")
    assert [a["metadata"]["hf_revision"] for a in json.loads(listed.stdout)] == [hub.commits["llama"]]


def test_revision_pins_the_commit(hub, hub_models):
    proc, out = download("tiny/llama", "--revision", "v1", "--name", "tiny-v1")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["hf_revision"] == hub.commits["llama@v1"] and art["name"] == "tiny-v1"
    import torch

    assert torch.allclose(logits(Path(art["path"])), logits(hub_models["v1"]), atol=1e-6)
    assert not torch.allclose(logits(Path(art["path"])), logits(hub_models["main"]), atol=1e-3)


def test_a_corrupt_file_in_the_cache_is_fetched_again(hub, workspace):
    proc, out = download("tiny/llama-gguf", "--gguf-file", "Q8_0")
    assert proc.returncode == 0, proc.stderr
    good = Path(only_artifact(out)["path"]).read_bytes()
    # Flip bytes in the cached blob: the next download notices the sha256 and fetches it again.
    blob = (cache_repo(workspace, "tiny/llama-gguf") / "snapshots" / hub.commits["gguf"]
            / "tiny-F32-copy-Q8_0.gguf").resolve()
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes(100))
    hub.log.clear()
    proc, out = download("tiny/llama-gguf", "--gguf-file", "Q8_0", "--revision", hub.commits["gguf"])
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests_for("tiny-F32-copy-Q8_0.gguf")) == 1  # fetched again, once
    logs = [e["message"] for e in events(workspace, out["run_id"]) if e["type"] == "log"]
    assert any("does not match the Hub's sha256" in m for m in logs)
    assert Path(only_artifact(out)["path"]).read_bytes() == good


@pytest.mark.slow
def test_offline_mode_resolves_from_the_cache_alone(hub, hub_models, workspace):
    proc, _ = download("tiny/llama")
    assert proc.returncode == 0, proc.stderr
    hub.log.clear()
    proc, out = download("tiny/llama", "--name", "offline-copy", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert hub.log == []  # not one request
    art = only_artifact(out)
    assert art["metadata"]["hf_revision"] == hub.commits["llama"]
    assert art["metadata"]["license"] == "apache-2.0"  # from the cached model card
    import torch

    assert torch.allclose(logits(Path(art["path"])), logits(hub_models["main"]), atol=1e-6)

    msg = refused("tiny/llama-gguf", "--gguf-file", "Q8_0", env={"HF_HUB_OFFLINE": "1"})
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg


BIG = ("tiny/big-gguf", "--gguf-file", "F32")


def big_file(hub) -> bytes:
    return hub.repos["tiny/big-gguf"].commits[hub.commits["big"]]["big-F32.gguf"]


def test_interrupted_transfer_resumes_with_only_the_rest(hub, workspace, tmp_path):
    size = len(big_file(hub))
    assert size > 20 * MiB
    hub.drop_once("tiny/big-gguf", "big-F32.gguf", after_bytes=15 * MiB)
    proc, out = download(*BIG, "--retries", "0")
    assert proc.returncode == 1
    assert "broke off" in out["error"] and "continue" in out["error"]
    partial = list((cache_repo(workspace, "tiny/big-gguf") / "blobs").glob("*.incomplete"))
    kept = partial[0].stat().st_size
    assert len(partial) == 1 and kept >= 10 * MiB  # whole 10 MiB chunks were written before the cut

    proc, out = download(*BIG)
    assert proc.returncode == 0, proc.stderr
    first, second = hub.requests_for("big-F32.gguf")
    assert first.range is None and first.sent == 15 * MiB
    assert second.range == f"bytes={kept}-" and second.sent == size - kept  # only the rest
    assert Path(only_artifact(out)["path"]).read_bytes() == big_file(hub)

    # Within one run, a cut transfer is resumed by itself.
    hub.log.clear()
    hub.drop_once("tiny/big-gguf", "big-F32.gguf", after_bytes=12 * MiB)
    proc, out = download(*BIG, env={"HF_HOME": str(tmp_path / "hf2")})
    assert proc.returncode == 0, proc.stderr
    first, second = hub.requests_for("big-F32.gguf")
    assert second.range == "bytes=10485760-" and first.sent + second.sent < size + 10 * MiB
    warnings = [e["message"] for e in events(workspace, out["run_id"]) if e["type"] == "log"]
    assert any("resuming (retry 1 of 3)" in m for m in warnings)
    assert Path(only_artifact(out)["path"]).read_bytes() == big_file(hub)


def test_cancelled_download_resumes_where_it_stopped(hub, workspace):
    hub.throttle_s_per_mib = 0.1
    _, out = download(*BIG, "--detach")
    run_id = out["run_id"]
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the first 10 MiB chunk has landed
        if (workspace / "runs" / run_id / "events.jsonl").exists() and any(
                e["type"] == "progress" and e["unit"] == "B" and e["step"] >= 10 * MiB
                for e in events(workspace, run_id)):
            break
        time.sleep(0.1)
    assert run_cli("runs", "cancel", run_id).returncode == 0
    while time.time() < deadline:
        status = json.loads(run_cli("runs", "show", run_id, "--json").stdout)["status"]
        if status not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status == "cancelled"
    checkpoint = json.loads(run_cli("runs", "show", run_id, "--json").stdout)["checkpoint"]
    assert json.loads(Path(checkpoint).read_text())["commit"] == hub.commits["big"]  # the commit to finish
    hub.throttle_s_per_mib = 0.0
    resumed = run_cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming tiny/big-gguf at commit {hub.commits['big'][:12]}" in resumed.stderr
    gets = hub.requests_for("big-F32.gguf")
    assert len(gets) == 2 and gets[0].range is None
    start = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert start > 0 and start % (10 * MiB) == 0 and start <= gets[0].sent  # whole chunks were kept
    assert gets[1].sent == len(big_file(hub)) - start  # and only the rest was sent again
    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "done"
    assert Path(shown["artifacts"][0]["path"]).read_bytes() == big_file(hub)


def test_gguf_repository_becomes_a_gguf_artifact_that_chats(hub, workspace):
    msg = refused("tiny/llama-gguf", "--gguf-file", "F32")
    assert "matches 2 files" in msg

    msg = refused("tiny/llama-gguf")
    assert "--gguf-file" in msg and "tiny-F32.gguf" in msg

    msg = refused("tiny/llama-gguf", "--gguf-file", "*.q4_k_m.gguf")
    assert "matches '*.q4_k_m.gguf'" in msg

    proc, out = download("tiny/llama-gguf", "--gguf-file", "q8_0")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    path = Path(art["path"])
    assert art["kind"] == "gguf" and path.name == "tiny-F32-copy-Q8_0.gguf"
    meta = art["metadata"]
    assert meta["hf_revision"] == hub.commits["gguf"] and meta["gguf"]["architecture"] == "llama"
    assert meta["gguf"]["file_type"] == "ALL_F32" and meta["gguf"]["chat_template"] is True
    assert [f["path"] for f in meta["files"]] == ["tiny-F32-copy-Q8_0.gguf"]
    assert {e.file for e in hub.log if e.method == "GET" and e.file} == {"tiny-F32-copy-Q8_0.gguf"}

    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0)
    assert reply["usage"]["completion_tokens"] > 0


def test_missing_and_gated_repositories_explain_what_to_do(hub, workspace):
    msg = refused("tiny/does-not-exist")
    assert "tiny/does-not-exist was not found" in msg and "HF_TOKEN" in msg

    page = f"{hub.url}/tiny/gated-gguf"
    msg = refused("tiny/gated-gguf", "--gguf-file", "F32")
    assert "gated" in msg and "HF_TOKEN" in msg and page in msg and "licence" in msg

    msg = refused("tiny/gated-gguf", "--gguf-file", "F32", env={"HF_TOKEN": "hf_not_granted"})
    assert "no access" in msg and page in msg and "accept the licence" in msg

    proc, out = download("tiny/gated-gguf", "--gguf-file", "F32", env={"HF_TOKEN": "hf_granted"})
    assert proc.returncode == 0, proc.stderr
    assert only_artifact(out)["metadata"]["license"] == "llama3.2"
    assert hub.requests_for("tiny-F32.gguf", "HEAD")[-1].authorization == "Bearer hf_granted"

    msg = refused("tiny/llama", "--revision", "no-such-branch")
    assert "revision 'no-such-branch' does not exist" in msg

    runs_before = len(list((workspace / "runs").iterdir()))
    msg = refused("not a repo")
    assert "owner/name" in msg
    assert len(list((workspace / "runs").iterdir())) == runs_before  # refused before a run was created


def test_unsupported_architecture_and_unsafe_pickles_are_refused(hub, hub_server, workspace):
    msg = refused("tiny/fancy")
    assert "FancyForCausalLM" in msg and "never run" in msg and "LlamaForCausalLM" in msg
    fetched = {e.file for e in hub.log if e.method == "GET" and e.file}
    assert "model.safetensors" not in fetched and "modeling_fancy.py" not in fetched  # refused before weights

    msg = refused("tiny/evil-bin")
    assert "weights_only=True" in msg
    assert not hub_server.evil_marker.exists()  # the pickle's code never ran


def test_bin_weights_load_with_weights_only(hub, hub_models):
    proc, out = download("tiny/llama-bin")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    assert art["metadata"]["weights_format"] == "bin"
    import torch

    assert torch.allclose(logits(Path(art["path"])), logits(hub_models["main"]), atol=1e-6)


def test_include_and_exclude_patterns_choose_the_files(hub, hub_models):
    proc, out = download("tiny/llama", "--include", "*.json,model.safetensors", "--exclude", "generation_config.json")
    assert proc.returncode == 0, proc.stderr
    art = only_artifact(out)
    expected = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    assert {f["path"] for f in art["metadata"]["files"]} == expected
    assert {e.file for e in hub.log if e.method == "GET" and e.file} == expected
    import torch

    assert torch.allclose(logits(Path(art["path"])), logits(hub_models["main"]), atol=1e-6)

    assert "no weights workbench can use" in refused("tiny/llama", "--exclude", "*.safetensors,*.bin")
    assert "has no config.json" in refused("tiny/llama", "--include", "*.safetensors")


def test_disk_preflight_refuses_before_downloading(hub):
    msg = refused("tiny/huge")
    assert "free on" in msg and "HF_HOME" in msg
    assert not hub.requests_for("model.safetensors")


def test_models_rm_keeps_the_hf_cache_unless_asked(hub, workspace):
    _, out = download("tiny/llama-gguf", "--gguf-file", "Q8_0")
    first = only_artifact(out)
    repo_cache = cache_repo(workspace, "tiny/llama-gguf")
    blob = (repo_cache / "snapshots" / hub.commits["gguf"] / "tiny-F32-copy-Q8_0.gguf").resolve()

    assert run_cli("models", "rm", first["id"], "--yes").returncode == 0
    assert not Path(first["path"]).exists() and blob.exists()  # the shared cache entry stays

    _, out = download("tiny/llama-gguf", "--gguf-file", "Q8_0")
    second = only_artifact(out)
    removed = run_cli("models", "rm", second["id"], "--yes", "--hf-cache")
    assert removed.returncode == 0, removed.stderr
    assert not Path(second["path"]).exists() and not blob.exists()
    assert not (repo_cache / "snapshots" / hub.commits["gguf"]).exists()
    assert json.loads(run_cli("models", "ls", "--json").stdout) == []


def test_hub_search_shows_size_and_licence(hub):
    code = ("import json; from workbench_download.hub import search; "
            "print(json.dumps(search('tiny', limit=3)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["id"] for r in rows] == ["tiny/llama", "tiny/llama-gguf", "tiny/gated-gguf"]
    top = rows[0]
    assert top["downloads"] == 1200 and top["likes"] == 7 and top["license"] == "apache-2.0"
    assert top["size"] == sum(len(d) for d in hub.repos["tiny/llama"].commits[hub.commits["llama"]].values())
    assert rows[2]["gated"] is True
    assert top["params"] > 0 and not top["gguf"] and rows[1]["gguf"] and rows[1]["params"] is None

    offline = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode != 0 and "HF_HUB_OFFLINE=1" in offline.stderr


def test_search_command_prints_the_matches(hub):
    proc = run_cli("search", "llama")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if "tiny/llama " in line)
    assert "1.2k" in row and "apache-2.0" in row
    assert any("tiny/llama-gguf" in line and "yes" in line for line in lines)
    assert "workbench download REPO_ID" in proc.stdout

    as_json = json.loads(run_cli("search", "gguf", "--json", "--limit", "1").stdout)
    assert [r["id"] for r in as_json] == ["tiny/llama-gguf"]

    nothing = run_cli("search", "no-such-model")
    assert nothing.returncode == 0 and "no model on the Hub matches 'no-such-model'" in nothing.stdout

    offline = run_cli("search", "llama", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2
    assert offline.stderr.strip() == "error: searching the Hub needs the network, but HF_HUB_OFFLINE=1 is set"


@pytest.mark.parametrize("bad", ["--gguf-file=Q4 --dtype=float16", "--gguf-file=Q4 --include=*.json"])
def test_contradictory_options_are_refused_before_a_run(bad, workspace):
    proc = run_cli("download", "tiny/llama", *bad.split())
    assert proc.returncode == 2 and "--" in proc.stderr
    assert not (workspace / "runs").exists()
