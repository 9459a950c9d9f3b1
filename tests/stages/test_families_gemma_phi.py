"""Gemma 2, Gemma 3 and Phi-3 end to end, against the reference: transformers for the math, llama.cpp for GGUF.

As for the other families: a tiny random-weight model is built with transformers, saved with
`save_pretrained` in the current config layout (`rope_parameters`) and, rewritten, in the previous
one (top-level `rope_theta`/`rope_scaling`), served by the Hub look-alike and downloaded with the
real CLI. LitGPT's logits must equal transformers'; the exported F32 GGUF run by llama.cpp too,
with the same greedy tokens; Q8_0 and Q4_K_M files must quantize, pass export's checks and load.
The probe is longer than the sliding window, so windowed layers are checked on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.families_support import (
    LORA_TARGETS,
    assert_quants_run,
    build_reference,
    check_download,
    compare_with_litgpt,
    download,
    export_gguf,
    finetune_merge_and_export,
    hub_env,
    llama_cpp_run,
    reference_greedy,
    reference_logits,
    start_hub,
)
from workbench.errors import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
GELU_TABLE_TOL = 5e-3  # measured 1.9e-3 (Gemma 2)
GELU_TABLE_EXACT = 1e-3  # measured 4.5e-4; fp32-sized jitter before the table alone gives 3.5e-4
N_IDS = 24
WINDOW = 8  # shorter than the probe
PHI_WINDOW = 20  # llama.cpp's phi3 has no window: its GGUF's context stops there
N_GREEDY = 6
SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
# family -> (transformers config class, fields besides SIZES)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma2": ("Gemma2Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0},
                                "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": WINDOW,
                                "attn_logit_softcapping": 4.0, "final_logit_softcapping": 6.0}),
    "gemma3": ("Gemma3TextConfig", {
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 200000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}},
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": WINDOW, "final_logit_softcapping": 6.0}),
    # Phi-4-mini's partial rotary; a window shorter than the probe but not than the exported context.
    "phi3": ("Phi3Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 30000.0,
                                                "partial_rotary_factor": 0.75},
                            "sliding_window": PHI_WINDOW, "tie_word_embeddings": False}),
}


class GgmlGelu(torch.nn.Module):
    """GELU (tanh) as llama.cpp's CPU backend computes it: looked up in an FP16 table."""

    def forward(self, x: Any) -> Any:
        y = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10, 0.0, torch.where(x >= 10, x, y))


def with_ggml_gelu(model: Any) -> Any:
    import copy

    twin = copy.deepcopy(model)
    for layer in twin.model.layers:
        layer.mlp.act_fn = GgmlGelu()
    return twin


def build(family: str, vocab: int, seed: int) -> Any:
    # Gemma's norms add one to their weights: draw those around zero, the others around one.
    return build_reference(*FAMILIES[family], SIZES, vocab, seed,
                           norm_center=0.0 if family.startswith("gemma") else 1.0, pad_token_id=0)


@pytest.fixture(scope="module")
def hub_families(tmp_path_factory: pytest.TempPathFactory):
    """Every family in both config layouts on one Hub look-alike, with the transformers models."""
    hub = start_hub(tmp_path_factory.mktemp("families"), FAMILIES, build, N_IDS)
    yield hub
    hub[0].stop()


@pytest.fixture(scope="module")
def env(hub_families, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return hub_env(hub_families[0], tmp_path_factory.mktemp("families-home"))


@pytest.mark.parametrize("layout", ["", "-old"], ids=["rope_parameters", "rope_theta"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_download_gives_transformers_logits(family, layout, hub_families, env):
    _, models, probe = hub_families
    check_download(f"fam/{family}{layout}", family, models[family], probe, env, TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_runs_in_llama_cpp_as_in_transformers(family, hub_families, env):
    import numpy as np

    _, models, probe = hub_families
    art = download(f"fam/{family}", env)
    files = export_gguf(art["id"], env)

    # Past Gemma's window, so sliding layers are checked; within Phi-3's, its GGUF's context.
    ids = probe[:(PHI_WINDOW if family == "phi3" else N_IDS) - N_GREEDY]
    expected = reference_logits(models[family], ids)
    got, greedy = llama_cpp_run(Path(files["f32"]["path"]), ids, n_ctx=N_IDS + 8, n_greedy=N_GREEDY)
    if family.startswith("gemma"):
        # llama.cpp's CPU GELU is an FP16 table, which alone moves these logits by ~2e-3; with the
        # same table in transformers, what is left is fp32 rounding landing on table steps.
        assert np.abs(got - expected).max() <= GELU_TABLE_TOL
        assert np.abs(got - reference_logits(with_ggml_gelu(models[family]), ids)).max() <= GELU_TABLE_EXACT
    else:
        assert np.abs(got - expected).max() <= TOL
    assert greedy == reference_greedy(models[family], ids, N_GREEDY)

    assert_quants_run(files, ids, n_ctx=N_IDS + 8)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_and_dpo_train_merge_and_the_merged_model_exports(family, hub_families, env):
    """LoRA on every projection and DPO, a few steps each; the merged model runs in llama.cpp as in LitGPT."""
    _, _, probe = hub_families
    # Within Phi-3's window, its GGUF's context; past Gemma's.
    n = PHI_WINDOW if family == "phi3" else N_IDS
    tol = GELU_TABLE_TOL if family.startswith("gemma") else TOL
    # llama.cpp's gemma2 has no output layer of its own, and an adapter on the head would untie it.
    targets = LORA_TARGETS.replace(",head", "") if family == "gemma2" else LORA_TARGETS
    finetune_merge_and_export(download(f"fam/{family}", env), probe[:n], tol, targets)


def test_a_gemma_2_with_an_output_layer_of_its_own_is_refused_at_export(hub_families, env):
    """What a LoRA adapter on `head` leaves: llama.cpp's gemma2 always reads the embedding, so no file is written."""
    import json

    from tests.conftest import run_cli
    from workbench.context import Context
    from workbench.locations import home
    from workbench.ml.checkpoint import load_config, load_state_dict, read_meta, save_model_dir
    from workbench.store import Store

    base = Path(download("fam/gemma2", env)["path"])
    sd = load_state_dict(base)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 0.01
    ctx = Context(Store())
    staged = save_model_dir(ctx.staging_dir("model"), sd, load_config(base), tokenizer_dir=base, meta=read_meta(base))
    model = ctx.register("model", staged, name="gemma2-untied").id
    proc = run_cli("export", model, "--gguf", "--quant", "f32", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert "\n" not in error and "always uses the embedding as its output layer" in error
    assert "finetune without that target" in error
    assert not list((home() / "exports").glob("**/*.gguf*"))


GEMMA_2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "intermediate_size": 9216,
    "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26,
    "num_key_value_heads": 4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "sliding_window": 4096, "vocab_size": 256000,
}
# Published config.json files, next to the name of LitGPT's own config for the model.
REAL_CONFIGS = {
    "google/gemma-2-2b": ("Gemma-2-2b", GEMMA_2_2B),
    "google/gemma-2-27b": ("Gemma-2-27b", {  # the same file but for the sizes
        **GEMMA_2_2B, "head_dim": 128, "hidden_size": 4608, "intermediate_size": 36864, "num_attention_heads": 32,
        "num_hidden_layers": 46, "num_key_value_heads": 16, "query_pre_attn_scalar": 144,
    }),
    "google/gemma-3-1b-it": ("Gemma-3-1b-it", {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": None,
        "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152, "intermediate_size": 6912, "max_position_embeddings": 32768,
        "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144,
    }),
    "microsoft/Phi-3-mini-4k-instruct": ("Phi-3-mini-4k-instruct", {
        "architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0,
        "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
        "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "vocab_size": 32064,
    }),
}
LONGROPE = {"type": "longrope", "long_factor": [1.0] * 47, "short_factor": [1.0] * 47}  # 48 pairs rotate


@pytest.mark.parametrize("repo_id", sorted(REAL_CONFIGS))
def test_config_from_config_json_matches_litgpts_own(repo_id):
    lit_name, hf = REAL_CONFIGS[repo_id]
    ours, diff = compare_with_litgpt(hf, repo_id, lit_name)
    # LitGPT's Gemma configs leave norm_eps at its 1e-5 default (config.json and transformers say
    # 1e-6), and give Gemma 3 1B the 131072 positions of the larger Gemma 3 (config.json: 32768).
    known = {"norm_eps": (1e-6, 1e-5)}
    if lit_name == "Gemma-3-1b-it":
        known["block_size"] = (32768, 131072)
    if lit_name.startswith("Phi-3"):
        # transformers' window of W attends to W positions (the download test checks ours against
        # it); LitGPT's table has 2048, the window of the original flash-attention code.
        known = {"sliding_window_size": (2047, 2048)}
    assert diff == known
    # LitGPT's RMSNorm adds Gemma's unit offset, and copy_weights_phi splits Phi-3's fused tensors,
    # only for these names.
    assert ours.name.startswith(("Gemma-", "Phi-3-"))


@pytest.mark.parametrize(("repo_id", "change", "message"), [
    ("google/gemma-2-2b", {"hidden_activation": "gelu"}, "hidden_activation 'gelu'"),
    ("google/gemma-2-2b", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("google/gemma-2-2b", {"layer_types": ["sliding_attention", "chunked_attention"] * 13}, "layer_types"),
    ("google/gemma-2-2b", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ("google/gemma-3-1b-it", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ("google/gemma-3-1b-it", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                  "sliding_attention": {"rope_type": "linear", "factor": 2.0,
                                                                        "rope_theta": 1e4}},
                              "rope_theta": None, "rope_local_base_freq": None}, "on sliding-window layers"),
    ("microsoft/Phi-3-mini-4k-instruct", {"rope_scaling": LONGROPE}, "LongRoPE long_factor is not 48"),
    ("microsoft/Phi-3-mini-4k-instruct", {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_fields_that_change_the_math_are_refused_by_name(repo_id, change, message):
    from workbench_download.convert import config_kwargs

    with pytest.raises(UserError, match=message):
        config_kwargs({**REAL_CONFIGS[repo_id][1], **change}, repo_id)


@pytest.mark.parametrize(("repo_id", "change", "message"), [
    ("google/gemma-2-2b", {"attention_scores_scalar": 64}, "attention_scores_scalar 64"),
    ("google/gemma-2-2b", {"final_logit_softcapping": None}, "final_logit_softcapping None"),
    ("google/gemma-2-2b", {"gelu_approximate": "none"}, "gelu_approximate"),
    ("google/gemma-3-1b-it", {"attention_logit_softcapping": 50.0}, "attention_logit_softcapping"),
    ("google/gemma-3-1b-it", {"rope_indices": [0] * 26}, "rope_indices"),
])
def test_export_refuses_what_llama_cpp_runs_differently(repo_id, change, message):
    from workbench_download.convert import config_kwargs
    from workbench_export.families import family_for

    config = {**config_kwargs(REAL_CONFIGS[repo_id][1], repo_id)[0], **change}
    with pytest.raises(UserError, match=message):
        family_for(config)
