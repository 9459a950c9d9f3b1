"""`workbench export` through the real CLI and worker process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import make_tiny_model


def test_export_with_json_prints_paths_sizes_types_and_perplexity_deltas(cli, registered_tiny_model, tmp_path):
    dist = tmp_path / "dist"
    proc = cli("export", registered_tiny_model, "--gguf", "--quant", "q8_0,f16", "--out", str(dist), "--json")

    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "done"
    files = {f["quant"]: f for f in out["result"]["files"]}
    assert set(files) == {"q8_0", "f16"}
    for quant, f in files.items():
        assert f["passed"] and f["path"].endswith(f"tiny-random-{quant}.gguf")
        assert f["size_bytes"] > 0 and isinstance(f["ppl_delta"], float)
        assert abs(f["ppl_delta"]) < 0.05 * f["ref_ppl"]
        assert (dist / f"tiny-random-{quant}.gguf").read_bytes()[:4] == b"GGUF"
        assert (dist / f"tiny-random-{quant}.Modelfile").read_text().startswith("# Ollama Modelfile")
    assert files["f16"]["size_bytes"] > files["q8_0"]["size_bytes"]
    assert sorted(a["name"] for a in out["artifacts"]) == ["tiny-random-f16", "tiny-random-q8_0"]


def test_file_failing_verification_is_not_registered_and_exit_is_nonzero(cli, registered_tiny_model, workspace):
    # A zero tolerance cannot be met by any float computation: the F32 check must fail.
    proc = cli("export", registered_tiny_model, "--gguf", "--quant", "f16", "--tolerance", "0", "--json")

    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["status"] == "failed" and "does not match LitGPT" in out["error"]
    assert out["artifacts"] == []
    assert list((workspace / "exports").rglob("*.gguf")) == []
    listed = cli("models", "ls", "--kind", "gguf", "--json")
    assert json.loads(listed.stdout) == []


def test_unsupported_family_is_refused_before_anything_is_written(cli, tmp_path, workspace):
    import shutil

    from workbench.context import Context
    from workbench.store import Store

    model = make_tiny_model(tmp_path / "neox", mlp_class_name="GptNeoxMLP", norm_class_name="LayerNorm",
                            parallel_residual=True, bias=True, rotary_percentage=0.25)
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(model, staged)
    art = ctx.register("model", staged, name="tiny-neox")

    proc = cli("export", art.id, "--gguf")
    assert proc.returncode == 2
    assert "GGUF export supports Llama" in proc.stderr and "Qwen2" in proc.stderr
    assert not (workspace / "runs").exists()
    no_gguf = cli("export", art.id, "--no-gguf")
    assert no_gguf.returncode == 2 and "only export format" in no_gguf.stderr


def test_stage_module_imports_nothing_heavy():
    code = ("import sys, workbench_export, workbench_export.stage; "
            "print(sorted(m for m in ('torch', 'litgpt', 'llama_cpp', 'gguf', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
