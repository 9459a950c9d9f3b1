"""Hostile chat templates, end to end in real processes: one that would create a directory if it
escaped the sandbox comes from a Hub repository (through the real `huggingface_hub` client and
`tests/hubserver.py`), from an edited `workbench.json`, or from a GGUF's metadata, and
`workbench download`, `chat` (checkpoint and GGUF), `serve` and `export` each refuse it with one
line and exit 2, and the directory is never created.

`hostile_template` and `assert_refused` are meant for any command that reads a template.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model, run_cli
from tests.hubserver import HubServer
from tests.stages.conftest import hf_repo_files, tiny_gguf
from workbench.prompts import CHATML, TemplateRefused


def hostile_template(marker: Path, *, when: str = "true") -> str:
    """ChatML that, if `when` holds and the sandbox failed, creates the directory `marker`."""
    return CHATML + "{% if " + when + " %}{{ cycler.__init__.__globals__.os.makedirs(" + repr(str(marker)) \
        + ") }}{% endif %}"


def assert_refused(proc: subprocess.CompletedProcess[str], marker: Path, *, origin: str, run: bool = False) -> None:
    """Exit 2 with one error line that names the template's origin, no traceback; nothing ran.

    A command that is not a run prints only that line; a run (`download`) prints its progress
    first and then the line, as "error: run ID failed: …", with the path to its log after it.
    """
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    if not run:
        assert lines == errors, proc.stderr
    message = errors[0].split(" failed: ", 1)[1] if run else errors[0].removeprefix("error: ")
    assert message.startswith(f"chat template of {origin} tries to reach attribute '__init__' "), message
    assert message.endswith(" outside the sandbox; refused"), message
    assert not marker.exists()


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox") / "pwned"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("sandbox-models") / "tiny")


@pytest.fixture(scope="module")
def hostile_dir(tiny: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its workbench.json edited to carry a hostile template."""
    model = tmp_path_factory.mktemp("hostile") / "edited"
    shutil.copytree(tiny, model)
    meta = json.loads((model / "workbench.json").read_text())
    meta["prompt_style"] = {**meta["prompt_style"], "chat_template": hostile_template(marker)}
    (model / "workbench.json").write_text(json.dumps(meta))
    return model


@pytest.fixture(scope="module")
def hostile_gguf(tiny: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gguf(tiny, tmp_path_factory.mktemp("hostile-gguf") / "evil.gguf", hostile_template(marker))


@pytest.fixture(scope="module")
def evil_hub(tiny: Path, hostile_gguf: Path, marker: Path):
    server = HubServer().start()
    server.add_repo("evil/template", hf_repo_files(tiny, chat_template=hostile_template(marker)))
    server.add_repo("evil/gguf", {"tiny-F32.gguf": hostile_gguf})
    yield server
    server.stop()


@pytest.fixture
def hub_env(evil_hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.setenv("HF_ENDPOINT", evil_hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    evil_hub.log.clear()
    return evil_hub


def no_models(kind: str) -> bool:
    listed = run_cli("models", "ls", "--kind", kind, "--json")
    return listed.returncode != 0 or json.loads(listed.stdout) == []


def test_download_refuses_a_hub_repository_with_a_hostile_template_before_the_weights(hub_env, marker):
    proc = run_cli("download", "evil/template")
    assert_refused(proc, marker, origin="model evil/template (tokenizer_config.json of evil/template)", run=True)
    fetched = {e.file for e in hub_env.log if e.method == "GET" and e.file}
    assert "tokenizer_config.json" in fetched and "model.safetensors" not in fetched
    assert no_models("model")


def test_download_refuses_a_gguf_with_a_hostile_template(hub_env, marker):
    proc = run_cli("download", "evil/gguf", "--gguf-file", "F32")
    assert_refused(proc, marker, origin="model tiny-F32.gguf (tokenizer.chat_template of tiny-F32.gguf)", run=True)
    assert no_models("gguf")


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_refuse_an_edited_workbench_json(command, hostile_dir, marker):
    args = ["--jsonl", "--no-save"] if command == "chat" else ["--port", "0"]
    proc = run_cli(command, str(hostile_dir), *args, "--threads", "1", input='{"content": "hi"}\n', timeout=120)
    assert_refused(proc, marker, origin=f"model edited ({hostile_dir / 'workbench.json'})")


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_refuse_a_gguf_with_a_hostile_template(command, hostile_gguf, marker):
    args = ["--jsonl", "--no-save"] if command == "chat" else ["--port", "0"]
    proc = run_cli(command, str(hostile_gguf), *args, "--threads", "1", input='{"content": "hi"}\n', timeout=120)
    assert_refused(proc, marker, origin=f"model evil.gguf (tokenizer.chat_template of {hostile_gguf})")


def test_export_refuses_an_edited_workbench_json_before_a_run(hostile_dir, marker, workspace):
    from workbench.context import Context
    from workbench.store import Store

    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(hostile_dir, staged)
    art = ctx.register("model", staged, name="edited")
    proc = run_cli("export", art.id, "--gguf", "--quant", "f16")
    assert_refused(proc, marker, origin=f"model {art.path.name} ({art.path / 'workbench.json'})")
    assert not (workspace / "runs").exists() and no_models("gguf")


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_template_that_hides_from_the_probe_is_refused_per_request(tiny, marker, tmp_path):
    """The probe at start-up sees nothing wrong; the sandbox still refuses the request that
    triggers the template, and the server goes on serving."""
    sly = tiny_gguf(tiny, tmp_path / "sly.gguf", hostile_template(marker, when="messages | length > 6"))
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", str(sly), "--port", "0",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://" in line, (line, proc.stderr.read() if proc.stderr else "")
        url = line.strip().rsplit(" at ", 1)[1]
        short = [{"role": "user", "content": "hi"}]
        status, body = _post(url + "/chat/completions", {"messages": short, "max_tokens": 2, "temperature": 0})
        assert status == 200, body
        status, body = _post(url + "/chat/completions", {"messages": short * 7, "max_tokens": 2})
        assert status == 500 and body["error"]["code"] == "chat_template_refused", body
        assert body["error"]["message"].startswith(
            f"chat template of model sly.gguf (tokenizer.chat_template of {sly}) tries to reach attribute '__init__'")
        assert not marker.exists()
        status, body = _post(url + "/chat/completions", {"messages": short, "max_tokens": 2, "temperature": 0})
        assert status == 200, body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_template_with_a_syntax_error_is_one_line_too(tiny, tmp_path):
    model = tmp_path / "broken"
    shutil.copytree(tiny, model)
    meta = json.loads((model / "workbench.json").read_text())
    meta["prompt_style"] = {**meta["prompt_style"], "chat_template": "{% for m in messages %}{{ m.content }}"}
    (model / "workbench.json").write_text(json.dumps(meta))
    proc = run_cli("chat", str(model), "--jsonl", "--no-save", input='{"content": "hi"}\n', timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [
        f"error: chat template of model broken ({model / 'workbench.json'}) is not valid Jinja: Unexpected end "
        "of template. Jinja was looking for the following tags: 'endfor' or 'else'. The innermost block that "
        "needs to be closed is 'for' (template line 1); refused"]


def test_eval_names_a_gguf_whose_template_does_not_parse(tiny, tmp_path):
    """llama-cpp-python compiles a GGUF's template while loading it; eval reads GGUF metadata
    that way, and a template that does not parse is the one-line refusal, not a Jinja traceback."""
    from workbench_evaluate.backends import gguf_metadata

    broken = tiny_gguf(tiny, tmp_path / "broken.gguf", "{% for m in messages %}{{ m.content }}")
    with pytest.raises(TemplateRefused, match=r"^chat template of model broken.gguf \(tokenizer.chat_template of "
                       r".*broken.gguf\) is not valid Jinja: Unexpected end of template"):
        gguf_metadata(broken)
