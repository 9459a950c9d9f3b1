"""The Hugging Face → LitGPT conversion on its own: configs and weights, without a server."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.families_support import IGNORED, compare_with_litgpt
from tests.stages.conftest import hf_config, hf_state_dict
from workbench.context import Context
from workbench.errors import UserError
from workbench.store import Store

# Published config.json files of real models, next to the name of LitGPT's own config for them.
REAL_CONFIGS = {
    "meta-llama/Llama-3.2-1B": ("Llama-3.2-1B", {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }),
    "HuggingFaceTB/SmolLM2-135M": ("SmolLM2-135M", {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 576,
        "intermediate_size": 1536, "max_position_embeddings": 8192, "model_type": "llama",
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True, "vocab_size": 49152,
    }),
    "Qwen/Qwen2.5-0.5B": ("Qwen2.5-0.5B", {
        "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "use_sliding_window": False, "vocab_size": 151936,
    }),
    "Qwen/Qwen3-0.6B": ("Qwen3-0.6B", {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
        "use_sliding_window": False, "vocab_size": 151936,
    }),
    "mistralai/Mistral-7B-v0.1": ("Mistral-7B-v0.1", {
        "architectures": ["MistralForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000,
    }),
    "allenai/OLMo-2-1124-7B": ("OLMo-2-1124-7B", {
        "architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "olmo2",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False, "vocab_size": 100352,
    }),
}


@pytest.mark.parametrize("repo_id", sorted(REAL_CONFIGS))
def test_config_from_config_json_matches_litgpts_own(repo_id):
    lit_name, hf = REAL_CONFIGS[repo_id]
    # LitGPT caps Mistral v0.1 at 4096 positions from before it had sliding windows; the model
    # card's 32768 is what we keep.
    ignored = IGNORED | ({"block_size"} if lit_name.startswith("Mistral") else set())
    _, diff = compare_with_litgpt(hf, repo_id, lit_name, ignored)
    assert diff == {}


def current_layout(hf: dict) -> dict:
    """config.json as transformers 5 writes it: rope_theta and rope scaling inside rope_parameters."""
    out = {k: v for k, v in hf.items() if k not in ("rope_theta", "rope_scaling")}
    out["rope_parameters"] = {"rope_type": "default", **(hf.get("rope_scaling") or {}), "rope_theta": hf["rope_theta"]}
    return out


@pytest.mark.parametrize("repo_id", sorted(REAL_CONFIGS))
def test_both_config_layouts_give_the_same_litgpt_config(repo_id):
    from workbench_download.convert import config_kwargs

    hf = REAL_CONFIGS[repo_id][1]
    assert config_kwargs(current_layout(hf), repo_id) == config_kwargs(hf, repo_id)


@pytest.mark.parametrize(("key", "value"), [
    ("attn_logit_softcapping", 50.0), ("partial_rotary_factor", 0.5), ("layer_types", ["sliding_attention"] * 16),
    ("quantization_config", {"quant_method": "bitsandbytes"}),
])
def test_fields_that_change_the_math_are_refused_by_name(key, value):
    from workbench_download.convert import config_kwargs

    with pytest.raises(UserError, match=key):
        config_kwargs({**REAL_CONFIGS["meta-llama/Llama-3.2-1B"][1], key: value}, "meta-llama/Llama-3.2-1B")


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_hf_weights_convert_back_to_the_exact_litgpt_model(model_type, tmp_path):
    from workbench_download.convert import check_fits, convert_weights, litgpt_config

    extra = {"qwen2": {"attn_bias": True}, "qwen3": {"norm_qk": True}}.get(model_type, {})
    model_dir = make_tiny_model(tmp_path / "m", seed=3, **extra)
    from workbench.ml.checkpoint import load_config, load_state_dict

    original = load_state_dict(model_dir)
    from safetensors.torch import save_file

    shard = tmp_path / "model.safetensors"
    save_file(hf_state_dict(model_dir, model_type), str(shard))
    config, family, arch = litgpt_config(hf_config(load_config(model_dir), model_type), f"tiny/{model_type}")
    sd = convert_weights(config, family, arch, [shard], None, Context(Store()))
    assert check_fits(config, sd, "tiny") == sum(t.numel() for t in original.values())
    assert sd.keys() == original.keys()
    assert all(torch.equal(sd[k], original[k]) for k in original)


def test_sharded_checkpoint_and_dtype(tmp_path):
    """Two shards, as large models publish them, and weights stored in the dtype asked for."""
    from workbench_download.convert import convert_weights, litgpt_config, weight_files

    model_dir = make_tiny_model(tmp_path / "m", seed=4)
    from safetensors.torch import save_file

    from workbench.ml.checkpoint import load_config, load_state_dict

    hf = hf_state_dict(model_dir, "llama")
    names = sorted(hf)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: hf[k] for k in part}, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(part, shard))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    local = {p.name: p for p in tmp_path.glob("*.safetensors")} | {index.name: index}
    fmt, shards = weight_files(local)
    assert fmt == "safetensors" and shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    config, family, arch = litgpt_config(hf_config(load_config(model_dir), "llama"), "tiny/llama")
    sd = convert_weights(config, family, arch, [local[s] for s in shards], torch.bfloat16, Context(Store()))
    original = load_state_dict(model_dir)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert all(torch.equal(sd[k], original[k].to(torch.bfloat16)) for k in original)

    del local["model-00002-of-00002.safetensors"]
    with pytest.raises(UserError, match="were not downloaded"):
        weight_files(local)


def test_default_selection_prefers_safetensors_and_skips_code():
    from workbench_download.convert import default_selection

    files = ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "pytorch_model.bin",
             "consolidated.safetensors", "modeling_x.py", "README.md", "LICENSE.txt", "onnx/model.onnx",
             "original/params.json"]
    assert sorted(default_selection(files)) == ["LICENSE.txt", "README.md", "config.json", "model.safetensors",
                                                "tokenizer.json", "tokenizer_config.json"]
    bins = ["config.json", "tokenizer.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json", "training_args.bin"]
    assert sorted(default_selection(bins)) == sorted(set(bins) - {"training_args.bin"})


@pytest.mark.parametrize(("change", "message"), [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel model, which workbench cannot convert"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias True"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"num_attention_heads": 5}, "describes no valid"),
])
def test_configs_without_a_faithful_conversion_are_refused(change, message, tmp_path):
    from workbench_download.convert import litgpt_config

    model_dir = make_tiny_model(tmp_path / "m")
    from workbench.ml.checkpoint import load_config

    hf = {**hf_config(load_config(model_dir), "llama"), **change}
    with pytest.raises(UserError, match=message):
        litgpt_config(hf, "tiny/x")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    from safetensors.torch import save_file
    from workbench_download.convert import check_fits, convert_weights, litgpt_config

    from workbench.ml.checkpoint import load_config

    model_dir = make_tiny_model(tmp_path / "m")
    hf = hf_config(load_config(model_dir), "llama")
    sd = hf_state_dict(model_dir, "llama")
    shard = tmp_path / "model.safetensors"
    save_file(sd, str(shard))
    config, family, arch = litgpt_config({**hf, "intermediate_size": hf["intermediate_size"] * 2}, "tiny/x")
    converted = convert_weights(config, family, arch, [shard], None, Context(Store()))
    with pytest.raises(UserError, match=r"do not match its config\.json"):
        check_fits(config, converted, "tiny/x")

    save_file({**sd, "model.layers.0.mystery.weight": torch.zeros(2)}, str(shard))
    with pytest.raises(UserError, match="mystery"):
        convert_weights(config, family, arch, [shard], None, Context(Store()))


def test_chat_template_sources(tmp_path):
    from workbench_download.convert import prompt_style

    ctx = Context(Store())
    tc = tmp_path / "tokenizer_config.json"
    tc.write_text(json.dumps({"eos_token": {"content": "</s>"},
                              "chat_template": [{"name": "tool_use", "template": "T"},
                                                {"name": "default", "template": "D"}]}))
    style, eos = prompt_style({"tokenizer_config.json": tc}, ctx)
    assert (style.name, style.chat_template, eos) == ("base", "D", "</s>")

    tc.write_text(json.dumps({"eos_token": "<|eot|>"}))
    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text("{{ messages[0]['content'] }}")
    style, _ = prompt_style({"tokenizer_config.json": tc, "chat_template.jinja": jinja}, ctx)
    assert style.render([{"role": "user", "content": "x"}], add_generation_prompt=False) == "x"

    style, _ = prompt_style({"tokenizer_config.json": tc}, ctx)
    assert style.name == "chatml" and style.eos_token == "<|eot|>"


def test_stage_module_stays_light():
    import subprocess
    import sys

    code = ("import sys, workbench_download.stage, workbench_download.hub; "
            "print(sorted(m for m in ('torch', 'litgpt', 'llama_cpp', 'huggingface_hub', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
