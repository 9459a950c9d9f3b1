"""What the model-family tests share: the reference models, the Hub repositories, the checks.

A tiny random-weight transformers model of a family is saved with `save_pretrained` in the
current config layout (`rope_parameters`) and, rewritten, in the previous one (top-level
`rope_theta`/`rope_scaling`), served by the Hub look-alike and downloaded with the real CLI.
Its logits are the reference for LitGPT's and for llama.cpp's on the exported GGUF.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.conftest import make_tokenizer, run_cli
from tests.hubserver import HubServer

# The name, the Hub reference, and LitGPT's vocab_size (the tokenizer's count; ours is the
# embedding's rows, which padded_vocab_size agrees on) legitimately differ from LitGPT's table.
IGNORED = {"name", "hf_config", "vocab_size"}


def previous_layout(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as transformers 4 wrote it: rope_theta and rope_scaling at the top level.

    Gemma 3's global rope is `rope_theta`/`rope_scaling`, its local one `rope_local_base_freq`.
    """
    out = dict(config)
    rope = dict(out.pop("rope_parameters"))
    if "full_attention" in rope:
        out["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        rope = dict(rope["full_attention"])
    out["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    out["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    return out


def build_reference(cls_name: str, fields: dict[str, Any], sizes: dict[str, int], vocab: int, seed: int, *,
                    norm_center: float = 1.0, **extra: Any) -> Any:
    """A random-weight transformers model of the family, with weights large enough to matter.

    Norm weights are drawn around `norm_center` (one, or zero where the family adds one itself),
    so that neither a missing norm nor a missing offset goes unnoticed.
    """
    import torch
    import transformers

    config = getattr(transformers, cls_name)(**sizes, **fields, vocab_size=vocab, bos_token_id=0, eos_token_id=0,
                                             **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(0.2 * torch.randn_like(p) + norm_center)
            else:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[-1]))
    return model.eval()


def reference_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def reference_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(reference_logits(model, seq)[-1].argmax()))
    return seq[len(ids):]


def padded_vocab(tok_dir: Path) -> int:
    """The tokenizer's vocabulary and a few spare rows, padded to a multiple of 64."""
    vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    return -(-vocab // 64) * 64


def probe_ids(tok_dir: Path, n: int) -> list[int]:
    """`n` ordinary token ids (no specials) to run every model on."""
    ids = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return sorted(ids.values())[40:40 + n]


def publish(server: HubServer, repo: str, model: Any, saved: Path, tok_dir: Path,
            chat_template: str | None = None) -> None:
    """Save `model` with the tokenizer beside it into `saved`, served as REPO (current config
    layout) and REPO-old (previous layout)."""
    model.save_pretrained(saved)
    for p in tok_dir.iterdir():
        shutil.copyfile(p, saved / p.name)
    if chat_template is not None:
        tok_config = json.loads((tok_dir / "tokenizer_config.json").read_text())
        (saved / "tokenizer_config.json").write_text(json.dumps({**tok_config, "chat_template": chat_template}))
    files: dict[str, bytes | Path] = {p.name: p for p in saved.iterdir() if p.is_file()}
    config = json.loads((saved / "config.json").read_text())
    assert "rope_parameters" in config and "rope_theta" not in config  # the current layout
    server.add_repo(repo, files)
    server.add_repo(f"{repo}-old", {**files, "config.json": json.dumps(previous_layout(config)).encode()})


def start_hub(base: Path, families: Iterable[str], build: Callable[[str, int, int], Any], n_ids: int,
              chat_template: Callable[[str], str] | None = None) -> tuple[HubServer, dict[str, Any], list[int]]:
    """Every family in both config layouts on one Hub look-alike, as fam/FAMILY and fam/FAMILY-old.

    `build(family, vocab, seed)` makes each transformers model; `chat_template(family)` its
    template, if any. Returns the server (its saved folders in `server.saved`), the models by
    family, and the probe ids. The caller stops the server.
    """
    tok_dir = make_tokenizer(base / "tokenizer")
    vocab = padded_vocab(tok_dir)
    server = HubServer().start()
    models: dict[str, Any] = {}
    for seed, family in enumerate(families):
        models[family] = build(family, vocab, seed)
        template = chat_template(family) if chat_template else None
        publish(server, f"fam/{family}", models[family], base / family, tok_dir, chat_template=template)
    server.saved = {family: base / family for family in models}  # type: ignore[attr-defined]
    return server, models, probe_ids(tok_dir, n_ids)


def hub_env(server: HubServer, home: Path) -> dict[str, str]:
    """The environment in which the CLI downloads from `server` into a workspace at `home`."""
    return {"WORKBENCH_HOME": str(home), "HF_HOME": str(home / "hf"), "HF_ENDPOINT": server.url,
            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


_downloaded: dict[tuple[str, str], dict[str, Any]] = {}


def download(repo: str, env: dict[str, str]) -> dict[str, Any]:
    """The model artifact `workbench download REPO` registers (once per repository and workspace)."""
    key = (env["WORKBENCH_HOME"], repo)
    if key not in _downloaded:
        proc = run_cli("download", repo, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        (art,) = json.loads(proc.stdout)["artifacts"]
        _downloaded[key] = art
    return _downloaded[key]


def litgpt_logits(model_dir: Path, ids: list[int]) -> Any:
    import torch

    from workbench.ml.checkpoint import load_model

    model = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


def check_download(repo: str, family: str, model: Any, probe: list[int], env: dict[str, str],
                   tol: float) -> dict[str, Any]:
    """`workbench download REPO` gives a FAMILY checkpoint whose LitGPT logits are `model`'s."""
    import numpy as np

    art = download(repo, env)
    assert art["metadata"]["family"] == family
    expected = reference_logits(model, probe)
    got = litgpt_logits(Path(art["path"]), probe)
    assert np.abs(expected).max() > 1.0  # logits large enough for the tolerance to mean something
    assert np.abs(got - expected).max() <= tol
    return art


def export_gguf(art_id: str, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`workbench export ID --gguf` at F32, Q8_0 and Q4_K_M: the files it wrote, by quant."""
    proc = run_cli("export", art_id, "--gguf", "--quant", "f32,q8_0,q4_k_m", "--json", env=env, timeout=600)
    assert proc.returncode == 0, (json.loads(proc.stdout or "{}").get("error"), proc.stderr)
    files = {f["quant"]: f for f in json.loads(proc.stdout)["result"]["files"]}
    assert set(files) == {"f32", "q8_0", "q4_k_m"}
    return files


def llama_cpp_run(gguf: Path, ids: list[int], n_ctx: int, n_greedy: int) -> tuple[Any, list[int]]:
    """llama.cpp's logits on `ids` and the `n_greedy` tokens it picks after them."""
    import numpy as np
    from workbench_export.verify import load_llama

    llm = load_llama(gguf, n_ctx=n_ctx)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)], dtype=np.float32)
        greedy: list[int] = []
        for _ in range(n_greedy):
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([greedy[-1]])
    finally:
        llm.close()
    return got, greedy


def assert_quants_run(files: dict[str, dict[str, Any]], ids: list[int], n_ctx: int) -> None:
    """The quantized files load in llama.cpp and give finite logits."""
    import numpy as np
    from workbench_export.verify import load_llama

    for quant in ("q8_0", "q4_k_m"):
        llm = load_llama(Path(files[quant]["path"]), n_ctx=n_ctx)
        try:
            llm.eval(ids)
            assert np.isfinite(np.array(llm.scores[:len(ids)])).all()
        finally:
            llm.close()


def compare_with_litgpt(hf: dict[str, Any], repo_id: str, lit_name: str,
                        ignored: set[str] = IGNORED) -> tuple[Any, dict[str, Any]]:
    """The LitGPT config we build from `hf`, and the fields where it differs from LitGPT's own `lit_name`."""
    from litgpt import Config
    from workbench_download.convert import litgpt_config

    ours, _, _ = litgpt_config(hf, repo_id)
    theirs = dataclasses.asdict(Config.from_name(lit_name))
    return ours, {k: (v, theirs[k]) for k, v in dataclasses.asdict(ours).items() if k not in ignored and v != theirs[k]}


# LoRA on every projection LitGPT can adapt, the fused qkv and gate/up of Phi-3 included.
LORA_TARGETS = "query,key,value,projection,mlp,head"


def finetune_merge_and_export(art: dict[str, Any], probe: list[int], tol: float,
                              targets: str = LORA_TARGETS) -> dict[str, Any]:
    """LoRA and DPO for a few steps on a downloaded checkpoint, in the test's own workspace; the
    LoRA-merged model is exported at F32 with the real CLI and run by llama.cpp.

    Checks: losses finite, the merged model's logits moved away from the base's, llama.cpp's
    logits on the merged GGUF within `tol` of LitGPT's on the merged checkpoint, same greedy
    tokens. Returns what was measured.
    """
    import numpy as np

    from tests.stages.test_dpo import pref_row, register_dataset
    from tests.stages.test_finetune_lora import base_options, demo_instructions
    from workbench.context import Context
    from workbench.store import Store
    from workbench.testing import run_inline

    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(art["path"], staged)
    base = ctx.register("model", staged, name=Path(art["path"]).name, metadata=art["metadata"])

    sft = demo_instructions.__wrapped__()
    lora = run_inline("finetune.lora", base_options(base.id, sft, max_steps=4, batch_size=2, targets=targets,
                                                         eval_batches=1))
    losses = lora.metrics("loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    (merged,) = lora.artifacts("model")
    from workbench.ml.checkpoint import load_config

    assert load_config(merged.path).rope_adjustments == load_config(base.path).rope_adjustments
    base_logits = litgpt_logits(base.path, probe)
    merged_logits = litgpt_logits(merged.path, probe)
    moved = float(np.abs(merged_logits - base_logits).max())
    assert moved > 1e-3  # the adapter learned something, and the merge kept it

    prefs = register_dataset([pref_row(n) for n in ("fox", "dog", "cat", "bird")], [pref_row("tree")])
    dpo = run_inline("dpo", {"model": base.id, "dataset": prefs, "max_steps": 3, "batch_size": 2,
                             "targets": targets.split(",")})
    dpo_losses = dpo.metrics("loss")
    assert len(dpo_losses) == 3 and all(math.isfinite(v) for v in dpo_losses)
    assert dpo.artifacts("model")

    proc = run_cli("export", merged.id, "--gguf", "--quant", "f32", "--json", timeout=600)
    assert proc.returncode == 0, (json.loads(proc.stdout or "{}").get("error"), proc.stderr)
    (gguf,) = json.loads(proc.stdout)["result"]["files"]
    n_greedy = 4
    ids = probe[:len(probe) - n_greedy]
    got, greedy = llama_cpp_run(Path(gguf["path"]), ids, n_ctx=len(probe) + 8, n_greedy=n_greedy)
    import torch

    from workbench.ml.checkpoint import load_model

    model = load_model(merged.path)
    with torch.no_grad():
        diff = float(np.abs(got - model(torch.tensor([ids]))[0].numpy()).max())
        seq = list(ids)
        for _ in range(n_greedy):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert diff <= tol
    assert greedy == seq[len(ids):]
    return {"moved": moved, "llama_cpp_diff": diff, "lora_loss": losses, "dpo_loss": dpo_losses}
