"""GGUF export: tiny LitGPT models written natively, loaded by real llama.cpp, compared token for token."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tiny_model
from workbench.errors import UserError


def _register(path: Path, name: str, kind: str = "model", metadata: dict | None = None) -> str:
    from workbench.context import Context
    from workbench.store import Store

    ctx = Context(Store())
    staged = ctx.staging_dir(kind)
    shutil.rmtree(staged)
    shutil.copytree(path, staged)
    return ctx.register(kind, staged, name=name, metadata=metadata or {}).id


def _reader(path: Path):
    import gguf

    return gguf.GGUFReader(path)


def _field(reader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else value.tolist()[0]


def _export_and_verify(model_dir: Path, out: Path, out_type: str = "f32"):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.verify import Reference, verify_gguf

    from tests.conftest import SAMPLE_TEXT

    info = write_gguf(model_dir, out, out_type)
    ref = Reference.build(model_dir, heldout_text=SAMPLE_TEXT * 2, max_ppl_tokens=256)
    return info, ref, verify_gguf(out, ref, exact=out_type == "f32")


def test_llama_with_grouped_query_attention_matches_litgpt_token_for_token(tmp_path):
    model = make_tiny_model(tmp_path / "llama", n_head=4, n_query_groups=2)
    info, ref, check = _export_and_verify(model, tmp_path / "llama-f32.gguf")

    assert check.passed, check.problems
    assert check.rel_diff < 1e-5 and check.greedy_identical and check.top1_agreement == 1.0
    assert abs(check.ppl - ref.ref_ppl) / ref.ref_ppl < 1e-4
    r = _reader(tmp_path / "llama-f32.gguf")
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.attention.head_count") == 4 and _field(r, "llama.attention.head_count_kv") == 2
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert "<|im_start|>" in _field(r, "tokenizer.chat_template")
    pad_id = ref.tokenizer.token_to_id("<|pad|>")
    assert _field(r, "tokenizer.ggml.padding_token_id") == pad_id
    assert _field(r, "tokenizer.ggml.eos_token_id") == ref.tokenizer.eos_id
    # The token list is padded to the embedding rows, with the padding marked unused.
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 384
    assert info["tied_embeddings"] is False and "output.weight" in {t.name for t in r.tensors}


def test_qwen2_family_with_qkv_bias_matches_litgpt(tmp_path):
    model = make_tiny_model(tmp_path / "qwen", attn_bias=True, rope_base=1000000, norm_eps=1e-6)
    info, _ref, check = _export_and_verify(model, tmp_path / "qwen-f32.gguf")

    assert info["arch"] == "qwen2"
    assert check.passed, check.problems
    assert check.rel_diff < 1e-5 and check.greedy_identical
    names = {t.name for t in _reader(tmp_path / "qwen-f32.gguf").tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"} <= names


def test_bf16_checkpoint_exports_to_f32_exactly(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = make_tiny_model(tmp_path / "bf16")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(model / "model.safetensors")).items()}
    save_file(sd, str(model / "model.safetensors"))  # how downloaded checkpoints usually come
    _info, _ref, check = _export_and_verify(model, tmp_path / "bf16.gguf")

    assert check.passed and check.rel_diff < 1e-5, check.problems


def test_verification_catches_a_wrong_rotary_layout(tmp_path, monkeypatch):
    import workbench_export.gguf_writer as writer

    model = make_tiny_model(tmp_path / "llama")
    monkeypatch.setattr(writer, "_permute", lambda w, n_head: w)  # the classic export bug
    _info, _ref, check = _export_and_verify(model, tmp_path / "bad.gguf")

    assert not check.passed
    assert any("logits differ" in p for p in check.problems)


def test_tied_embeddings_are_written_once_and_still_match(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = make_tiny_model(tmp_path / "tied")
    sd = load_file(str(model / "model.safetensors"))
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    save_file(sd, str(model / "model.safetensors"))
    torch.save(sd, model / "lit_model.pth")
    info, _ref, check = _export_and_verify(model, tmp_path / "tied.gguf")

    assert info["tied_embeddings"] is True
    assert "output.weight" not in {t.name for t in _reader(tmp_path / "tied.gguf").tensors}
    assert check.passed and check.greedy_identical, check.problems


def test_llama3_rope_scaling_is_carried_by_rope_factors(tmp_path):
    adjustments = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=16)
    model = make_tiny_model(tmp_path / "l3", rope_adjustments=adjustments, n_head=2, n_query_groups=1)
    _info, _ref, check = _export_and_verify(model, tmp_path / "l3.gguf")

    assert check.passed, check.problems
    assert "rope_freqs.weight" in {t.name for t in _reader(tmp_path / "l3.gguf").tensors}


@pytest.mark.parametrize("out_type, tensor_type", [("f16", "F16"), ("bf16", "BF16")])
def test_half_precision_files_keep_norms_in_f32_and_perplexity(tmp_path, out_type, tensor_type):
    model = make_tiny_model(tmp_path / "m")
    info, _ref, check = _export_and_verify(model, tmp_path / f"m-{out_type}.gguf", out_type)

    types = {t.name: t.tensor_type.name for t in _reader(tmp_path / f"m-{out_type}.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == tensor_type and types["token_embd.weight"] == tensor_type
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert check.passed, check.problems
    assert abs(check.ppl_increase) < 0.01 and check.rel_diff < 0.02
    f32 = _export_and_verify(model, tmp_path / "m-f32.gguf")[0]
    assert info["size_bytes"] < 0.6 * f32["size_bytes"]


def test_narrow_model_reports_k_quant_fallbacks(tmp_path):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    model = make_tiny_model(tmp_path / "narrow")  # width 64: K-quant rows need multiples of 256
    write_gguf(model, tmp_path / "n-f32.gguf", "f32")
    report = quantize(tmp_path / "n-f32.gguf", tmp_path / "n-q4_k_m.gguf", "q4_k_m")

    assert report["fallbacks"], "every 2-D tensor of a width-64 model must fall back"
    types = {t.name: t.tensor_type.name for t in _reader(tmp_path / "n-q4_k_m.gguf").tensors}
    for fb in report["fallbacks"]:
        assert fb["row_length"] % 256 != 0
        assert types[fb["tensor"]] == fb["actual"] and fb["actual"] not in ("Q4_K", "Q6_K")
    assert {fb["tensor"] for fb in report["fallbacks"]} == {n for n, t in types.items() if t != "F32"}


def test_width_256_model_really_gets_k_quants(tmp_path):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    model = make_tiny_model(tmp_path / "wide", n_embd=256, intermediate_size=512, n_layer=1)
    write_gguf(model, tmp_path / "w-f32.gguf", "f32")
    report = quantize(tmp_path / "w-f32.gguf", tmp_path / "w-q4_k_m.gguf", "q4_k_m")

    assert report["fallbacks"] == []
    assert report["tensor_types"].get("Q4_K", 0) >= 4
    assert set(report["tensor_types"]) <= {"F32", "Q4_K", "Q6_K"}


def test_every_quant_type_loads_and_keeps_perplexity(tmp_path):
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import QUANT_TYPES, quantize
    from workbench_export.verify import Reference, verify_gguf

    from tests.conftest import SAMPLE_TEXT

    model = make_tiny_model(tmp_path / "m")
    write_gguf(model, tmp_path / "m-f32.gguf", "f32")
    ref = Reference.build(model, heldout_text=SAMPLE_TEXT * 2, max_ppl_tokens=256, n_greedy=2)
    sizes = {}
    for qtype in QUANT_TYPES:
        report = quantize(tmp_path / "m-f32.gguf", tmp_path / f"m-{qtype}.gguf", qtype)
        check = verify_gguf(tmp_path / f"m-{qtype}.gguf", ref, exact=False)
        assert check.passed, (qtype, check.problems)
        assert check.tokenizer_mismatches == []
        sizes[qtype] = report["size_bytes"]
    assert sizes["q2_k"] < sizes["q4_k_m"] < sizes["q8_0"] < (tmp_path / "m-f32.gguf").stat().st_size


def test_interrupted_write_leaves_no_file(tmp_path):
    from workbench_export.gguf_writer import write_gguf

    model = make_tiny_model(tmp_path / "m")

    def stop_midway(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_gguf(model, tmp_path / "out" / "m.gguf", "f16", stop_midway)
    assert list((tmp_path / "out").iterdir()) == []


def test_unsupported_family_is_refused_with_the_supported_ones_named(tmp_path):
    from workbench_export.families import family_for, read_config

    model = make_tiny_model(tmp_path / "neox", mlp_class_name="GptNeoxMLP", norm_class_name="LayerNorm",
                            parallel_residual=True, bias=True, rotary_percentage=0.25)
    with pytest.raises(UserError, match=r"GPT-NeoX.*supports Llama .*Qwen2"):
        family_for(read_config(model), model / "model_config.yaml")


# -- the stage ------------------------------------------------------------------------------


def test_export_stage_registers_verified_files_as_children_of_the_model(registered_tiny_model, workspace, tmp_path):
    from workbench.testing import run_inline

    run = run_inline("export", {"model": registered_tiny_model, "quant": "f16,q4_k_m", "out": str(tmp_path / "dist")})

    arts = run.artifacts("gguf")
    assert [a.name for a in arts] == ["tiny-random-f16", "tiny-random-q4_k_m"]
    for art in arts:
        assert art.parents == [registered_tiny_model]
        gguf_path = art.path / art.metadata["file"]
        assert gguf_path.read_bytes()[:4] == b"GGUF"
        assert "TEMPLATE" in (art.path / "Modelfile").read_text()
        assert {"perplexity", "ppl_delta", "size_bytes"} <= set(art.metrics)
        assert art.metadata["verification"]["passed"] is True
        assert art.metadata["conversion"]["greedy_identical"] is True
    q4 = arts[1]
    assert q4.metadata["quant"] == "q4_k_m" and q4.metadata["fallbacks"]
    files = {f["quant"]: f for f in run.result["files"]}
    assert files["q4_k_m"]["fallbacks"] == len(q4.metadata["fallbacks"])
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "tiny-random-f16.Modelfile", "tiny-random-f16.gguf", "tiny-random-q4_k_m.Modelfile", "tiny-random-q4_k_m.gguf"]
    # Nothing half-written or scratch is left in the exports directory.
    leftovers = [p for p in (workspace / "exports").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_lora_adapter_is_merged_on_the_fly(tiny_model, registered_tiny_model, tmp_path):
    import torch

    from workbench.ml.lora import LoRASettings, load_lora_model, save_adapter
    from workbench.testing import run_inline

    settings = LoRASettings(r=4, alpha=8, targets=("query", "value", "mlp"))
    lora = load_lora_model(tiny_model, settings)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    adapter_dir = save_adapter(tmp_path / "adapter", lora, settings, registered_tiny_model)
    adapter_id = _register(adapter_dir, "tiny-lora", kind="adapter")

    run = run_inline("export", {"model": adapter_id, "quant": "f32"})

    art = run.artifacts("gguf")[0]
    assert art.parents == [adapter_id, registered_tiny_model]
    assert art.metadata["merged_adapter"] == adapter_id
    conversion = art.metadata["conversion"]
    assert conversion["passed"] and conversion["rel_diff"] < 1e-5  # matched against the merged model
    # ...which answers differently from the base model: the adapter really is in the file.
    from workbench_export.pipeline import HELDOUT
    from workbench_export.verify import Reference

    base = Reference.build(tiny_model, heldout_text=HELDOUT.read_text(encoding="utf-8"), n_greedy=1)
    assert abs(base.ref_ppl - conversion["ref_ppl"]) > 1e-3


def test_cancelled_export_leaves_nothing_behind(registered_tiny_model, workspace, tmp_path):
    from workbench_export.pipeline import export
    from workbench_export.stage import Options

    from workbench.context import Context
    from workbench.errors import Cancelled
    from workbench.options import parse_options
    from workbench.store import Store

    store = Store()
    ctx = Context(store, run_dir=tmp_path / "run")
    ctx.cancel_requested = True  # as if Ctrl-C arrived while the first tensors were written
    with pytest.raises(Cancelled):
        export(parse_options(Options, {"model": registered_tiny_model, "quant": ["q8_0"]}), ctx)
    assert list((workspace / "exports").iterdir()) == []
    assert store.list_artifacts("gguf") == []


def test_adapter_whose_base_model_is_gone_is_refused(tiny_model, tmp_path):
    from workbench.ml.lora import LoRASettings, load_lora_model, save_adapter
    from workbench.testing import run_inline

    settings = LoRASettings(r=2, alpha=4)
    adapter_dir = save_adapter(tmp_path / "adapter", load_lora_model(tiny_model, settings), settings,
                               "model-000000-gone00")
    adapter_id = _register(adapter_dir, "orphan", kind="adapter")
    with pytest.raises(UserError, match="base model model-000000-gone00 is not in this workspace"):
        run_inline("export", {"model": adapter_id})
