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

from tests.conftest import make_tokenizer, run_cli
from tests.hubserver import HubServer

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


def previous_layout(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as transformers 4 wrote it: rope_theta and rope_scaling at the top level."""
    out = dict(config)
    rope = dict(out.pop("rope_parameters"))
    out["rope_theta"] = rope.pop("rope_theta")
    out["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    return out


def build_reference(family: str, vocab: int, seed: int) -> Any:
    """A random-weight transformers model of the family, with weights large enough to matter."""
    cls_name, fields = FAMILIES[family]
    config = getattr(transformers, cls_name)(**SIZES, **fields, vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm weights: around one, but not one
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[-1]))
    return model.eval()


def reference_logits(model: Any, ids: list[int]) -> Any:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def reference_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(reference_logits(model, seq)[-1].argmax()))
    return seq[len(ids):]


@pytest.fixture(scope="module")
def hub_families(tmp_path_factory: pytest.TempPathFactory):
    """Every family in both config layouts on one Hub look-alike, with the transformers models."""
    base = tmp_path_factory.mktemp("families")
    tok_dir = make_tokenizer(base / "tokenizer")
    vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    vocab = -(-vocab // 64) * 64
    server = HubServer().start()
    models = {}
    for seed, family in enumerate(FAMILIES):
        model = build_reference(family, vocab, seed)
        saved = base / family
        model.save_pretrained(saved)
        files: dict[str, bytes | Path] = {p.name: p for p in saved.iterdir() if p.is_file()}
        files.update({p.name: p for p in tok_dir.iterdir()})
        tok_config = json.loads((tok_dir / "tokenizer_config.json").read_text())
        template = CHAT_TEMPLATE.replace("{{ family }}", family)
        files["tokenizer_config.json"] = json.dumps({**tok_config, "chat_template": template}).encode()
        (saved / "tokenizer_config.json").write_bytes(files["tokenizer_config.json"])  # type: ignore[arg-type]
        for name in ("tokenizer.json", "generation_config.json"):
            (saved / name).write_bytes((tok_dir / name).read_bytes())
        config = json.loads((saved / "config.json").read_text())
        assert "rope_parameters" in config and "rope_theta" not in config  # the current layout
        server.add_repo(f"fam/{family}", files)
        server.add_repo(f"fam/{family}-old", {**files, "config.json": json.dumps(previous_layout(config)).encode()})
        models[family] = model
        if family == "qwen3":  # sliding windows on some layers: no LitGPT model computes that
            sliding = {**config, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
                       "layer_types": ["full_attention", "sliding_attention"]}
            server.add_repo("fam/qwen3-sliding", {**files, "config.json": json.dumps(sliding).encode()})
    ids = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    probe = sorted(ids.values())[40:40 + N_IDS]  # ordinary tokens, no specials
    server.saved = {family: base / family for family in FAMILIES}  # type: ignore[attr-defined]
    yield server, models, probe
    server.stop()


@pytest.fixture(scope="module")
def env(hub_families, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("families-home")
    return {"WORKBENCH_HOME": str(home), "HF_HOME": str(home / "hf"), "HF_ENDPOINT": hub_families[0].url,
            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


_downloaded: dict[str, dict[str, Any]] = {}


def download(repo: str, env: dict[str, str]) -> dict[str, Any]:
    """The model artifact `workbench download REPO` registers (once per repository and module)."""
    if repo not in _downloaded:
        proc = run_cli("download", repo, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        (art,) = out["artifacts"]
        _downloaded[repo] = art
    return _downloaded[repo]


def reference_chat(family: str, saved: Path) -> str:
    """The prompt transformers' own tokenizer renders for CHAT from the repository's files."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
    return tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def litgpt_logits(model_dir: Path, ids: list[int]) -> Any:
    from workbench.ml.checkpoint import load_model

    model = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


@pytest.mark.parametrize("layout", ["", "-old"], ids=["rope_parameters", "rope_theta"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_download_gives_transformers_logits(family, layout, hub_families, env):
    import numpy as np

    _, models, probe = hub_families
    art = download(f"fam/{family}{layout}", env)
    assert art["metadata"]["family"] == family
    expected = reference_logits(models[family], probe)
    got = litgpt_logits(Path(art["path"]), probe)
    assert np.abs(expected).max() > 1.0  # logits large enough for the tolerance to mean something
    assert np.abs(got - expected).max() <= TOL

    from workbench.prompts import style_for_model

    server = hub_families[0]
    assert style_for_model(Path(art["path"])).render(CHAT) == reference_chat(family, server.saved[family])


def test_a_local_directory_converts_as_a_download_does(hub_families, tmp_path):
    """`convert_directory`: a save_pretrained folder with the tokenizer beside it, no Hub involved."""
    import shutil

    import numpy as np
    from workbench_download.convert import convert_directory

    from workbench.context import Context
    from workbench.store import Store

    server, models, probe = hub_families
    folder = shutil.copytree(server.saved["llama"], tmp_path / "Llama-local")
    art = convert_directory(folder, Context(Store()))
    assert art.metadata["family"] == "llama" and art.name == "Llama-local"
    got = litgpt_logits(art.path, probe)
    assert np.abs(got - reference_logits(models["llama"], probe)).max() <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_runs_in_llama_cpp_as_in_transformers(family, hub_families, env):
    import numpy as np
    from workbench_export.verify import load_llama

    _, models, probe = hub_families
    art = download(f"fam/{family}", env)
    proc = run_cli("export", art["id"], "--gguf", "--quant", "f32,q8_0,q4_k_m", "--json", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = {f["quant"]: f for f in json.loads(proc.stdout)["result"]["files"]}
    assert set(files) == {"f32", "q8_0", "q4_k_m"}
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
    llm = load_llama(Path(files["f32"]["path"]), n_ctx=WINDOW)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)], dtype=np.float32)
        greedy = []
        for _ in range(N_GREEDY):
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([greedy[-1]])
    finally:
        llm.close()
    assert np.abs(got - expected).max() <= TOL
    assert greedy == reference_greedy(models[family], ids, N_GREEDY)

    for quant in ("q8_0", "q4_k_m"):
        llm = load_llama(Path(files[quant]["path"]), n_ctx=WINDOW)
        try:
            llm.eval(ids)
            assert np.isfinite(np.array(llm.scores[:len(ids)])).all()
        finally:
            llm.close()


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
