"""YaRN rope scaling (Qwen2.5 and Qwen3 long-context configs) end to end, against transformers and llama.cpp.

A tiny random-weight Qwen2 and Qwen3 with YaRN (factor 4 over an original context of 256, a ramp
of rotary dimensions between the extrapolated and interpolated ones) are saved in both config
layouts, served by the Hub look-alike and downloaded with the real CLI. LitGPT's logits must equal
transformers'; the exported F32 GGUF run by llama.cpp too, with the same greedy tokens; Q8_0 and
Q4_K_M files must quantize, pass export's checks and load. YaRN in transformers does not depend on
the sequence length, so one probe covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.families_support import (
    assert_quants_run,
    build_reference,
    check_download,
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
N_IDS = 24
N_GREEDY = 6
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "rope_theta": 10000.0}
SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2": ("Qwen2Config", {"rope_parameters": YARN}),
    "qwen3": ("Qwen3Config", {"rope_parameters": YARN, "head_dim": 64, "tie_word_embeddings": True}),
}


def build(family: str, vocab: int, seed: int) -> Any:
    cls, fields = FAMILIES[family]
    return build_reference(cls, {**fields, "rope_parameters": dict(fields["rope_parameters"])}, SIZES, vocab, seed)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    hub = start_hub(tmp_path_factory.mktemp("yarn"), FAMILIES, build, N_IDS)
    yield hub
    hub[0].stop()


@pytest.fixture(scope="module")
def env(hub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return hub_env(hub[0], tmp_path_factory.mktemp("yarn-home"))


@pytest.mark.parametrize("layout", ["", "-old"], ids=["rope_parameters", "rope_theta"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_download_gives_transformers_logits(family, layout, hub, env):
    check_download(f"fam/{family}{layout}", family, hub[1][family], hub[2], env, TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_runs_in_llama_cpp_as_in_transformers(family, hub, env):
    import numpy as np
    from gguf import GGUFReader

    _, models, probe = hub
    files = export_gguf(download(f"fam/{family}", env)["id"], env)
    reader = GGUFReader(files["f32"]["path"])
    assert int(reader.fields[f"{family}.rope.scaling.original_context_length"].parts[-1][0]) == 256
    assert float(reader.fields[f"{family}.rope.scaling.factor"].parts[-1][0]) == 4.0

    ids = probe[:N_IDS - N_GREEDY]
    got, greedy = llama_cpp_run(Path(files["f32"]["path"]), ids, n_ctx=N_IDS + 8, n_greedy=N_GREEDY)
    assert np.abs(got - reference_logits(models[family], ids)).max() <= TOL
    assert greedy == reference_greedy(models[family], ids, N_GREEDY)
    assert_quants_run(files, ids, n_ctx=N_IDS + 8)


def test_lora_and_dpo_train_merge_and_the_merged_model_exports(hub, env):
    """LoRA and DPO train with YaRN, the merged model keeps it and runs in llama.cpp as in LitGPT."""
    finetune_merge_and_export(download("fam/qwen2", env), hub[2], TOL)


QWEN = {"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
        "max_position_embeddings": 131072, "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "vocab_size": 151936, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}


def test_yarn_attention_factor_is_transformers():
    from workbench_download.convert import config_kwargs

    adj = config_kwargs(QWEN, "Qwen/Qwen2.5-0.5B-Instruct")[0]["rope_adjustments"]
    config = transformers.Qwen2Config(**{**QWEN, "rope_scaling": dict(QWEN["rope_scaling"])})
    _, attention = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["yarn"](config, None)
    assert adj["attention_factor"] == pytest.approx(attention, rel=1e-12)
    assert adj["yarn_factor"] == 4.0 and adj["yarn_original_max_seq_len"] == 32768


@pytest.mark.parametrize(("change", "message"), [({"beta_fast": 16}, "rope_adjustments"),
                                                 ({"truncate": False}, "rope_adjustments")])
def test_yarn_llama_cpp_computes_differently_is_refused_at_export(change, message):
    from workbench_download.convert import config_kwargs
    from workbench_export.families import _DEFAULTS, family_for

    hf = {**QWEN, "rope_scaling": {**QWEN["rope_scaling"], **change}}
    with pytest.raises(UserError, match=f"uses {message}"):
        family_for({**_DEFAULTS, **config_kwargs(hf, "Qwen/Qwen2.5-0.5B-Instruct")[0]})


def test_yarn_on_a_family_without_it_is_refused_at_download():
    from workbench_download.convert import config_kwargs

    llama = {**QWEN, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    with pytest.raises(UserError, match="rope scaling 'yarn'"):
        config_kwargs(llama, "meta-llama/x")
