"""LongRoPE Phi models (Phi-3-*-128k, Phi-3.5-mini, Phi-4-mini) end to end, against transformers and llama.cpp.

A tiny random-weight Phi-3 with LongRoPE (distinct short and long factors, partial rotary as in
Phi-4-mini, an original context of 256 positions stretched to 1024) is saved in both config
layouts, served by the Hub look-alike and downloaded with the real CLI.

transformers picks the factors per forward pass: short while the sequence is within the original
context, long for every position once it is longer. llama.cpp picks them by its context size
(`n_ctx` above the original: long). So both are checked in both regimes: a short probe with a
short context, and a probe longer than the original context with a long one. In the third
regime, a short prompt in a long context, llama.cpp uses the long factors where transformers
uses the short ones; the last test pins down that this is llama.cpp's choice, not the file's.
The original context is 256 because llama.cpp rounds every context up to a multiple of 256.
"""

from __future__ import annotations

import copy
import json
import random
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
    litgpt_logits,
    llama_cpp_run,
    reference_greedy,
    reference_logits,
    start_hub,
)
from workbench.errors import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
ORIGINAL = 256
N_SHORT = 18
N_LONG = 264  # past the original context
N_GREEDY = 6
SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4 * ORIGINAL)
PAIRS = 12  # rotated pairs per head: 3/4 of 32 dimensions


def factors(seed: int, top: float) -> list[float]:
    rng = random.Random(seed)
    return sorted(round(1.0 + (top - 1.0) * rng.random(), 4) for _ in range(PAIRS))


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "short_factor": factors(1, 1.5), "long_factor": factors(2, 16.0)}


def build(family: str, vocab: int, seed: int) -> Any:
    # Top-level partial_rotary_factor too, as Phi-4-mini's config.json has it: transformers' LongRoPE
    # re-reads the top-level one (default 1.0) over the one in the rope parameters.
    return build_reference("Phi3Config", {"rope_parameters": dict(LONGROPE), "original_max_position_embeddings": ORIGINAL,
                                          "tie_word_embeddings": False}, SIZES, vocab, seed, pad_token_id=0,
                           partial_rotary_factor=LONGROPE["partial_rotary_factor"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    hub = start_hub(tmp_path_factory.mktemp("longrope"), ["phi3-longrope"], build, N_SHORT)
    yield hub
    hub[0].stop()


@pytest.fixture(scope="module")
def env(hub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return hub_env(hub[0], tmp_path_factory.mktemp("longrope-home"))


@pytest.fixture(scope="module")
def probes(hub) -> tuple[list[int], list[int]]:
    """A short probe, and a long one that begins with it."""
    short = hub[2]
    vocab = len(json.loads((hub[0].saved["phi3-longrope"] / "tokenizer.json").read_text())["model"]["vocab"])
    rng = random.Random(0)
    return short, short + [rng.randrange(8, vocab) for _ in range(N_LONG - len(short))]


@pytest.fixture(scope="module")
def exported(env) -> dict[str, dict[str, Any]]:
    return export_gguf(download("fam/phi3-longrope", env)["id"], env)


@pytest.mark.parametrize("layout", ["", "-old"], ids=["rope_parameters", "rope_theta"])
def test_download_gives_transformers_logits_short_and_long(layout, hub, env, probes):
    import numpy as np

    _, models, _ = hub
    model = models["phi3-longrope"]
    art = check_download(f"fam/phi3-longrope{layout}", "phi3", model, probes[0], env, TOL)
    expected = reference_logits(model, probes[1])
    assert np.abs(litgpt_logits(Path(art["path"]), probes[1]) - expected).max() <= TOL
    # The long factors made a difference: the long probe's first rows are not the short probe's.
    assert np.abs(expected[:len(probes[0])] - reference_logits(model, probes[0])).max() > 1e-2


def test_export_runs_in_llama_cpp_as_in_transformers_in_both_regimes(hub, exported, probes):
    import numpy as np
    from gguf import GGUFReader

    model = hub[1]["phi3-longrope"]
    files = exported

    reader = GGUFReader(files["f32"]["path"])
    assert int(reader.fields["phi3.context_length"].parts[-1][0]) == 4 * ORIGINAL
    assert int(reader.fields["phi3.rope.scaling.original_context_length"].parts[-1][0]) == ORIGINAL
    attn = float(reader.fields["phi3.rope.scaling.attn_factor"].parts[-1][0])
    assert attn == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-6)
    tensors = {t.name: t for t in reader.tensors}
    for which in ("long", "short"):
        assert list(tensors[f"rope_factors_{which}.weight"].data) == pytest.approx(LONGROPE[f"{which}_factor"])

    short = probes[0][:N_SHORT - N_GREEDY]
    got, greedy = llama_cpp_run(Path(files["f32"]["path"]), short, n_ctx=ORIGINAL, n_greedy=N_GREEDY)
    assert np.abs(got - reference_logits(model, short)).max() <= TOL
    assert greedy == reference_greedy(model, short, N_GREEDY)

    long = probes[1][:N_LONG - N_GREEDY]
    got, greedy = llama_cpp_run(Path(files["f32"]["path"]), long, n_ctx=2 * ORIGINAL, n_greedy=N_GREEDY)
    expected = reference_logits(model, long)
    # Export's own F32 standard, relative to the largest logit: llama.cpp's rounding of the angles
    # grows with the position (measured 1.3e-4 at position 257, logits up to 7.6, where LitGPT's
    # and transformers' fp32 are within 2e-5 of transformers in float64).
    assert np.abs(got - expected).max() <= TOL * np.abs(expected).max()
    assert greedy == reference_greedy(model, long, N_GREEDY)

    assert_quants_run(files, short, n_ctx=ORIGINAL)
    assert_quants_run(files, long, n_ctx=2 * ORIGINAL)


def test_llama_cpp_picks_the_long_factors_by_its_context(hub, exported, probes):
    """A short prompt in a context longer than the original: llama.cpp rotates it with the long
    factors, as transformers rotates the same tokens at the start of a long sequence."""
    import numpy as np

    model = hub[1]["phi3-longrope"]
    short = probes[0]
    got, _ = llama_cpp_run(Path(exported["f32"]["path"]), short, n_ctx=2 * ORIGINAL, n_greedy=0)
    assert np.abs(got - reference_logits(model, probes[1])[:len(short)]).max() <= TOL
    assert np.abs(got - reference_logits(model, short)).max() > 1e-2


def test_generation_with_a_kv_cache_picks_the_factors_by_its_context(hub, env, probes):
    """LitGPT with a KV cache (the torch chat engine) picks as llama.cpp does: by the context it holds."""
    import numpy as np

    from workbench.ml.checkpoint import load_model

    model = hub[1]["phi3-longrope"]
    lit = load_model(Path(download("fam/phi3-longrope", env)["path"]))
    short = probes[0]
    for context, expected in ((ORIGINAL, reference_logits(model, short)),
                              (2 * ORIGINAL, reference_logits(model, probes[1])[:len(short)])):
        lit.max_seq_length = context
        lit.set_kv_cache(batch_size=1)
        with torch.no_grad():
            got = lit(torch.tensor([short]), input_pos=torch.arange(len(short)))[0].numpy()
        assert np.abs(got - expected).max() <= TOL


def test_lora_and_dpo_train_merge_and_the_merged_model_exports(hub, env, probes):
    """LoRA and DPO train the LongRoPE model (it computes LongRoPE while training), the merged model
    keeps the factors and runs in llama.cpp as in LitGPT."""
    finetune_merge_and_export(download("fam/phi3-longrope", env), probes[0], TOL)


# The shape of Phi-3.5-mini-instruct's config.json (its factor values aside).
PHI_35_MINI = {
    "architectures": ["Phi3ForCausalLM"], "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "model_type": "phi3", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_factor": [1.0 + i / 8 for i in range(48)], "short_factor": [1.0 + i / 100 for i in range(48)],
                     "type": "longrope"},
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False, "vocab_size": 32064,
}


def test_phi_35_mini_config_keeps_its_factors_and_transformers_attention_factor():
    from workbench_download.convert import config_kwargs

    fields = config_kwargs(PHI_35_MINI, "microsoft/Phi-3.5-mini-instruct")[0]
    config = transformers.Phi3Config(**copy.deepcopy(PHI_35_MINI))  # it edits rope_scaling in place
    _, attention = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["longrope"](config, None)
    assert fields["rope_adjustments"] == {
        "long_factor": PHI_35_MINI["rope_scaling"]["long_factor"],
        "short_factor": PHI_35_MINI["rope_scaling"]["short_factor"],
        "original_max_seq_len": 4096, "attention_factor": pytest.approx(attention, rel=1e-12),
    }
    assert fields["block_size"] == 131072


@pytest.mark.parametrize(("change", "message"), [
    ({"long_factor": [1.0] * 47}, "LongRoPE long_factor is not 48 positive numbers"),
    ({"short_factor": [1.0] * 47 + [0.0]}, "LongRoPE short_factor is not 48 positive numbers"),
    ({"type": "yarn"}, "rope scaling 'yarn'"),
])
def test_longrope_it_cannot_reproduce_is_refused_by_name(change, message):
    from workbench_download.convert import config_kwargs

    hf = {**PHI_35_MINI, "rope_scaling": {**PHI_35_MINI["rope_scaling"], **change}}
    with pytest.raises(UserError, match=message):
        config_kwargs(hf, "microsoft/Phi-3.5-mini-instruct")


def test_longrope_exports_only_as_phi3():
    from workbench_download.convert import config_kwargs
    from workbench_export.families import _DEFAULTS, family_for

    fields = config_kwargs(PHI_35_MINI, "microsoft/Phi-3.5-mini-instruct")[0]
    assert family_for({**_DEFAULTS, **fields}).name == "phi3"
    llama = {**_DEFAULTS, "name": "x", "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm",
             "parallel_residual": False, "bias": False, "rotary_percentage": 1.0,
             "rope_adjustments": fields["rope_adjustments"]}
    with pytest.raises(UserError, match="uses rope_adjustments"):
        family_for(llama)
