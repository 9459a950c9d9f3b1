"""Each model family end to end, against the reference: transformers for the math, llama.cpp for GGUF.

One row per family: a tiny random-weight model is built with transformers from a config with a
non-default rope base (and Llama 3 scaling for Llama), saved with `save_pretrained` in the
current config layout (`rope_parameters`) and, rewritten, in the previous one (top-level
`rope_theta`/`rope_scaling`), served by the Hub look-alike and downloaded with the real CLI.
LitGPT's logits must equal transformers'; the exported F32 GGUF run by llama.cpp too, with the
same greedy tokens; Q8_0 and Q4_K_M files must quantize, pass export's checks and load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.families_support import (
    assert_quants_run,
    build_reference,
    check_download,
    download,
    export_gguf,
    hub_env,
    litgpt_logits,
    llama_cpp_run,
    reference_greedy,
    reference_logits,
    start_hub,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
N_IDS = 24  # longer than Mistral's window below, so LitGPT's window is checked too
WINDOW = 16
N_GREEDY = 6
SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
# family -> (transformers config class, fields besides SIZES)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}, "tie_word_embeddings": True,
                              "rms_norm_eps": 1e-5}),
    "qwen2": ("Qwen2Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "qwen3": ("Qwen3Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "head_dim": 64,
                              "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {"rope_parameters": {"rope_type": "default", "rope_theta": 50000.0},
                                  "sliding_window": WINDOW}),
    "olmo2": ("Olmo2Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
}


# The model's own chat template, unlike the ChatML workbench falls back to, so its use shows.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} ({{ family }})\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant ({{ family }})\n{% endif %}"
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def hub_families(tmp_path_factory: pytest.TempPathFactory):
    """Every family in both config layouts on one Hub look-alike, with the transformers models."""
    hub = start_hub(tmp_path_factory.mktemp("families"), FAMILIES,
                    lambda family, vocab, seed: build_reference(*FAMILIES[family], SIZES, vocab, seed), N_IDS,
                    chat_template=lambda family: CHAT_TEMPLATE.replace("{{ family }}", family))
    server = hub[0]
    # Sliding windows on some layers: no LitGPT model computes that.
    saved = server.saved["qwen3"]
    files: dict[str, bytes | Path] = {p.name: p for p in saved.iterdir() if p.is_file()}
    sliding = {**json.loads((saved / "config.json").read_text()), "use_sliding_window": True, "sliding_window": 8,
               "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention"]}
    server.add_repo("fam/qwen3-sliding", {**files, "config.json": json.dumps(sliding).encode()})
    yield hub
    server.stop()


@pytest.fixture(scope="module")
def env(hub_families, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return hub_env(hub_families[0], tmp_path_factory.mktemp("families-home"))


def reference_chat(family: str, saved: Path) -> str:
    """The prompt transformers' own tokenizer renders for CHAT from the repository's files."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
    return tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("layout", ["", "-old"], ids=["rope_parameters", "rope_theta"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_download_gives_transformers_logits(family, layout, hub_families, env):
    from workbench.prompts import style_for_model

    server, models, probe = hub_families
    art = check_download(f"fam/{family}{layout}", family, models[family], probe, env, TOL)
    assert style_for_model(Path(art["path"])).render(CHAT) == reference_chat(family, server.saved[family])


def test_a_local_directory_converts_as_a_download_does(hub_families, tmp_path):
    """`workbench models import`: a save_pretrained folder with the tokenizer beside it, no Hub involved."""
    import shutil

    import numpy as np

    from workbench.store import Store
    from workbench.testing import run_inline

    server, models, probe = hub_families
    folder = shutil.copytree(server.saved["llama"], tmp_path / "Llama-local")
    art = Store().find_artifact(run_inline("import", {"path": str(folder)}).result["artifact"])
    assert art.metadata["family"] == "llama" and art.name == "Llama-local"
    got = litgpt_logits(art.path, probe)
    assert np.abs(got - reference_logits(models["llama"], probe)).max() <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_runs_in_llama_cpp_as_in_transformers(family, hub_families, env):
    import numpy as np

    _, models, probe = hub_families
    art = download(f"fam/{family}", env)
    files = export_gguf(art["id"], env)
    from gguf import GGUFReader

    reader = GGUFReader(files["f32"]["path"])
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    context = int(reader.fields[f"{arch}.context_length"].parts[-1][0])
    assert context == (WINDOW if family == "mistral" else SIZES["max_position_embeddings"])
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode()
    prompt = Jinja2ChatFormatter(template, eos_token="<|endoftext|>", bos_token="<|endoftext|>")(messages=CHAT).prompt
    assert prompt == reference_chat(family, hub_families[0].saved[family])

    ids = probe[:WINDOW - N_GREEDY]  # within Mistral's window, the context its GGUF declares
    expected = reference_logits(models[family], ids)
    got, greedy = llama_cpp_run(Path(files["f32"]["path"]), ids, n_ctx=WINDOW, n_greedy=N_GREEDY)
    assert np.abs(got - expected).max() <= TOL
    assert greedy == reference_greedy(models[family], ids, N_GREEDY)
    assert_quants_run(files, ids, n_ctx=WINDOW)


def test_a_feature_without_parity_is_refused_at_download(hub_families, env):
    proc = run_cli("download", "fam/qwen3-sliding", "--json", env=env)
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert "\n" not in error and error.startswith("fam/qwen3-sliding: sliding-window attention on some layers")
    listed = run_cli("models", "ls", "--json", env=env)
    assert listed.returncode == 0 and "qwen3-sliding" not in listed.stdout


@pytest.mark.parametrize(("fields", "named"), [
    ({"attn_bias": True, "rope_adjustments": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_seq_len": 64}}, "rope_adjustments"),
    ({"norm_qk": True, "sliding_window_size": 16}, "sliding_window_size"),
    ({"norm_qk": True, "norm_qk_type": "olmo2"}, "norm_qk_type"),
])
def test_export_refuses_what_llama_cpp_computes_differently(fields, named):
    from workbench_export.families import _DEFAULTS, family_for

    config = {**_DEFAULTS, "name": "x", "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm",
              "parallel_residual": False, "bias": False, "rotary_percentage": 1.0, **fields}
    with pytest.raises(Exception, match=f"uses {named}, which llama.cpp"):
        family_for(config)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_finetune_dpo_and_eval_run_on_a_downloaded_checkpoint(family, hub_families, env):
    """A few steps of each on the real downloaded checkpoint: the stages take the family as it is."""
    import shutil

    from tests.stages.test_dpo import pref_row, register_dataset
    from tests.stages.test_finetune_lora import base_options, demo_instructions
    from workbench.context import Context
    from workbench.store import Store
    from workbench.testing import run_inline

    art = download(f"fam/{family}", env)
    ctx = Context(Store())  # this test's own workspace
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(art["path"], staged)
    model = ctx.register("model", staged, name=f"fam-{family}", metadata=art["metadata"]).id

    sft = demo_instructions.__wrapped__()
    lora = run_inline("finetune.lora", base_options(model, sft, max_steps=2, batch_size=2))
    assert lora.metrics("loss") and all(math.isfinite(v) for v in lora.metrics("loss"))
    prefs = register_dataset([pref_row(n) for n in ("fox", "dog", "cat", "bird")], [pref_row("tree")])
    dpo = run_inline("dpo", {"model": model, "dataset": prefs, "max_steps": 1, "batch_size": 2})
    assert dpo.metrics("loss") and math.isfinite(dpo.metrics("loss")[0])
    evaluated = run_inline("eval", {"models": [model], "preferences": prefs, "tasks": ["preference"]})
    assert model in evaluated.result["metrics"]


@pytest.mark.parametrize(("litgpt_name", "family", "context"), [
    ("Llama-3.2-1B", "llama", 131072), ("SmolLM2-135M", "llama", 8192), ("Qwen2.5-0.5B", "qwen2", 32768),
    ("Qwen3-0.6B", "qwen3", 40960), ("Mistral-7B-v0.1", "mistral", 4096), ("OLMo-2-1124-7B", "olmo2", 4096),
])
def test_litgpts_own_configs_export_as_their_family(litgpt_name, family, context):
    """LitGPT's table entries (as a finetuned or pretrained model would carry them) find their family."""
    import dataclasses

    from litgpt import Config
    from workbench_export.families import family_for, shape_of

    config = dataclasses.asdict(Config.from_name(litgpt_name))
    assert family_for(config).name == family
    assert shape_of(config).context_length == min(context, config["block_size"])
