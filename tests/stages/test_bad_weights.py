"""Truncated and corrupt weights files, through the real CLI: every command that reads weights
refuses them with exit 2 and one line naming the file and what is wrong, before a run exists,
leaving nothing registered or half-written. The checks are compared with what the reference
readers (the safetensors library, gguf's reader, zipfile) make of the same bytes."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import make_tiny_model, run_cli
from tests.hubserver import HubServer
from tests.stages.conftest import hf_repo_files, tiny_gguf
from tests.stages.test_eval import register, write_dataset
from workbench.errors import UserError
from workbench.store import Store
from workbench.weightfiles import check_weights

CHAT = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
PREFS = [{"messages": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}] * 4
TEXT = [{"text": "The quick brown fox jumps over the lazy dog."}] * 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model directory and its GGUF, made once for the module; tests damage copies."""
    root = tmp_path_factory.mktemp("pristine")
    model = make_tiny_model(root / "tiny")
    return {"model": model, "gguf": tiny_gguf(model, root / "tiny.gguf")}


def damaged_model(pristine: dict[str, Path], tmp_path: Path, which: str) -> tuple[str, Path]:
    """A registered copy of the tiny model whose weights file is cut short; (id, its directory)."""
    copy = tmp_path / "model"
    shutil.copytree(pristine["model"], copy)
    if which == "lit_model.pth":  # no safetensors: the .pth is what loaders read
        (copy / "model.safetensors").unlink()
    art_id = register(copy, "model", "damaged")
    path = Store().find_artifact(art_id).path
    cut(path / which, 20_480)
    return art_id, path


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def refused(out, path: Path, what: str, workspace: Path, artifacts_before: int) -> None:
    """Exit 2, one line naming the file, its directory and what is wrong; nothing left behind."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert f"{path.name} in {path.parent}" in lines[0] and what in lines[0], lines[0]
    runs = workspace / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a run was created"
    store = Store()
    assert len(store.list_artifacts()) == artifacts_before, "something was registered"
    assert not any(r.status == "running" for r in store.list_runs())
    staging = workspace / "staging"
    assert not staging.exists() or not any(staging.iterdir()), "a half-written artifact was left"


STAGES = {
    "export": lambda m, d: ["export", m, "--gguf", "--quant", "f16"],
    "eval": lambda m, d: ["eval", m, "--dataset", d["pretrain"], "--tasks", "perplexity", "--limit", "2"],
    "finetune lora": lambda m, d: ["finetune", "lora", m, d["instruction"], "--max-steps", "1"],
    "finetune classify": lambda m, d: ["finetune", "classify", m, str(d["csv"])],
    "dpo": lambda m, d: ["dpo", m, d["preference"], "--max-steps", "1"],
    "pretrain --init-from": lambda m, d: ["pretrain", d["pretrain"], "--init-from", m, "--max-steps", "1"],
}


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, str | Path]:
    csv = tmp_path / "labels.csv"
    csv.write_text("text,label\nhello there,ham\nWIN CASH NOW,spam\nsee you,ham\nFREE PRIZE,spam\n")
    return {
        kind: register(write_dataset(tmp_path / kind, kind, rows, rows), "dataset", kind)
        for kind, rows in (("pretrain", TEXT), ("instruction", CHAT), ("preference", PREFS))
    } | {"csv": csv}


@pytest.mark.parametrize("which", ["model.safetensors", "lit_model.pth"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_refuses_a_truncated_model_before_a_run_exists(stage, which, pristine, datasets, tmp_path, workspace):
    art_id, path = damaged_model(pristine, tmp_path, which)
    before = len(Store().list_artifacts())
    out = run_cli(*STAGES[stage](art_id, datasets), timeout=120)
    refused(out, path / which, "is truncated", workspace, before)


@pytest.mark.parametrize("command", ["chat", "serve"])
@pytest.mark.parametrize("which", ["model.safetensors", "lit_model.pth", "gguf"])
def test_chat_and_serve_refuse_truncated_weights_at_start(command, which, pristine, tmp_path, workspace):
    if which == "gguf":
        path = tmp_path / "cut-model.bin"  # chat knows a GGUF by its magic, whatever its name
        shutil.copy(pristine["gguf"], path)
        cut(path, path.stat().st_size // 2)
        ref = str(path)
    else:
        ref, model_dir = damaged_model(pristine, tmp_path, which)
        path = model_dir / which
    before = len(Store().list_artifacts())
    args = [command, ref, "--port", "0"] if command == "serve" else [command, ref]
    out = run_cli(*args, input="hello\n/exit\n", timeout=60)
    refused(out, path, "is truncated", workspace, before)
    assert Store().list_conversations() == []


def test_eval_refuses_a_truncated_gguf_artifact(pristine, datasets, tmp_path, workspace):
    path = tmp_path / "model-f32.gguf"
    shutil.copy(pristine["gguf"], path)
    art_id = register(path, "gguf", "cut")
    stored = Store().find_artifact(art_id).path
    stored = stored if stored.is_file() else stored / path.name
    cut(stored, stored.stat().st_size - 100)
    before = len(Store().list_artifacts())
    out = run_cli("eval", art_id, "--dataset", datasets["pretrain"], "--tasks", "perplexity", timeout=120)
    refused(out, stored, f"its header says the tensors end at byte {pristine['gguf'].stat().st_size:,}",
            workspace, before)


# The loaders check again: a file can change between validate() and the run.


def test_loading_a_model_directory_names_the_truncated_file(pristine, tmp_path):
    from workbench.ml.checkpoint import load_model

    model = shutil.copytree(pristine["model"], tmp_path / "m")
    cut(model / "model.safetensors", 20_480)
    header = struct.unpack("<Q", (model / "model.safetensors").read_bytes()[:8])[0]
    with pytest.raises(UserError) as err:
        load_model(model)
    assert str(err.value).startswith(f"model.safetensors in {model} is truncated: the header says ")
    assert str(err.value).endswith(f"bytes of tensors, the file holds {20_480 - 8 - header:,}")


def test_the_gguf_writer_never_pads_a_file_that_shrank_after_its_check(pristine, tmp_path):
    from workbench_export.gguf_writer import _SafetensorsReader

    st = shutil.copy(pristine["model"] / "model.safetensors", tmp_path / "model.safetensors")
    reader = _SafetensorsReader(Path(st))
    last = max(reader.header, key=lambda n: reader.header[n]["data_offsets"][1])
    cut(Path(st), Path(st).stat().st_size - 4)
    with pytest.raises(UserError, match=rf"model.safetensors in .* is truncated: tensor '{last}' needs"):
        reader.get(last)


def test_download_conversion_names_a_truncated_weights_file(pristine, tmp_path):
    from workbench_download.convert import load_weights

    for name in ("model.safetensors", "lit_model.pth"):
        path = Path(shutil.copy(pristine["model"] / name, tmp_path / name))
        cut(path, 20_480)
        with pytest.raises(UserError, match=rf"^{name} is truncated"):
            load_weights(path)


@pytest.mark.parametrize("file", ["model.safetensors", "tiny-F32.gguf"])
def test_a_download_whose_weights_arrive_truncated_registers_nothing(file, pristine, workspace, monkeypatch):
    """The Hub serves the file as it is (its sizes and hashes match), so only the checks see it."""
    files: dict[str, bytes] = hf_repo_files(pristine["model"]) if file.endswith(".safetensors") else {}
    whole = files[file] if file in files else pristine["gguf"].read_bytes()
    files[file] = whole[:20_480]
    server = HubServer().start()
    try:
        server.add_repo("tiny/cut", files)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        pick = ["--gguf-file", "F32"] if file.endswith(".gguf") else []
        out = run_cli("download", "tiny/cut", *pick, timeout=120)
    finally:
        server.stop()
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{file} is truncated" in out.stderr and "Traceback" not in out.stderr, out.stderr
    store = Store()
    assert store.list_artifacts() == [] and not any(r.status == "running" for r in store.list_runs())
    for folder in ("models", "exports", "staging"):
        assert not list((workspace / folder).glob("*")) if (workspace / folder).exists() else True, folder


# The checks agree with the reference readers on what is damaged.


def safetensors_with(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


F32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
BAD_SAFETENSORS = {
    "header length past the end": (struct.pack("<Q", 4096) + b"{}", "is truncated: the header says its JSON takes 4,096"),
    "header not JSON": (struct.pack("<Q", 4) + b"{{{{", "is corrupt: its header is not valid JSON"),
    "tensors past the end": (safetensors_with({"a": F32x4}, bytes(10)), "the header says 16 bytes of tensors, the file holds 10"),
    "shape against span": (safetensors_with({"a": {**F32x4, "shape": [5]}}, bytes(16)), "says F32 [5] (20 bytes) but spans 16"),
    "overlap": (safetensors_with({"a": F32x4, "b": {**F32x4, "data_offsets": [8, 24]}}, bytes(24)),
                "tensor 'b' starts at byte 8 of the data where the previous one ends at 16"),
    "unknown dtype": (safetensors_with({"a": {**F32x4, "dtype": "F33"}}, bytes(16)), "has an unknown dtype ('F33')"),
    "bytes after the last tensor": (safetensors_with({"a": F32x4}, bytes(20)), "holds 4 bytes after its last tensor"),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_damaged_safetensors_are_refused_as_the_safetensors_library_refuses_them(case, tmp_path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    data, message = BAD_SAFETENSORS[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorError):
        load_file(str(path))
    with pytest.raises(UserError, match=f"^model.safetensors in {re.escape(str(tmp_path))} .*{re.escape(message)}"):
        check_weights(path)
    path.write_bytes(safetensors_with({"a": F32x4}, bytes(16)))
    check_weights(path)
    assert load_file(str(path))["a"].shape == (4,)


@pytest.mark.parametrize(("dtype", "count", "nbytes"), [("F4", 4, 2), ("F6_E2M3", 4, 3), ("F8_E8M0", 3, 3),
                                                     ("BF16", 3, 6), ("C64", 2, 16), ("BOOL", 5, 5)])
def test_every_dtype_the_safetensors_library_reads_is_accepted(dtype, count, nbytes, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_with({"a": {"dtype": dtype, "shape": [count], "data_offsets": [0, nbytes]}},
                                      bytes(nbytes)))
    with safe_open(str(path), "np") as fh:
        assert list(fh.keys()) == ["a"]
    check_weights(path)


def test_a_gguf_cut_anywhere_is_refused_as_ggufs_reader_refuses_it(pristine, tmp_path):
    from gguf import GGUFReader

    data = pristine["gguf"].read_bytes()
    check_weights(pristine["gguf"])
    GGUFReader(pristine["gguf"])
    path = tmp_path / "cut.gguf"
    for size in (3, 10, 100, 3000, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError):
            GGUFReader(path)
        with pytest.raises(UserError, match=rf"^cut.gguf in {re.escape(str(tmp_path))} (is truncated|is not a GGUF file)"):
            check_weights(path)
    path.write_bytes(data[:4] + struct.pack("<I", 99) + data[8:])
    with pytest.raises(ValueError):
        GGUFReader(path)
    with pytest.raises(UserError, match=r"is corrupt: version 99 is not a GGUF version llama\.cpp reads"):
        check_weights(path)


def test_a_pth_cut_short_is_refused_as_zipfile_refuses_it(pristine, tmp_path):
    import zipfile

    data = (pristine["model"] / "lit_model.pth").read_bytes()
    path = tmp_path / "lit_model.pth"
    for size in (100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(path)
        with pytest.raises(UserError, match=rf"^lit_model.pth in {re.escape(str(tmp_path))} is truncated or corrupt"):
            check_weights(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        check_weights(path)
