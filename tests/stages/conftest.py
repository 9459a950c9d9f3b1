"""Fixtures for stage tests: tiny Hugging Face repositories served by a local Hub look-alike.

The repositories are built from tiny LitGPT models: LitGPT's own LitGPT→HF weight functions
(`litgpt.scripts.convert_lit_checkpoint`) give the Hugging Face tensor names, so converting a
download back must reproduce the original model exactly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model
from tests.hubserver import HubServer

MiB = 1 << 20
HF_ARCHES = {
    "llama": ("LlamaForCausalLM", "copy_weights_llama"),
    "qwen2": ("Qwen2ForCausalLM", "copy_weights_qwen_2_5"),
    "qwen3": ("Qwen3ForCausalLM", "copy_weights_qwen_3"),
}


def hf_config(config: Any, model_type: str) -> dict[str, Any]:
    """config.json as transformers writes it for the LitGPT `config`."""
    arch = HF_ARCHES[model_type][0]
    return {
        "architectures": [arch], "model_type": model_type, "hidden_act": "silu",
        "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "rope_theta": float(config.rope_base), "vocab_size": config.padded_vocab_size,
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0,
        "attention_bias": model_type == "qwen2",
    }


def hf_state_dict(model_dir: Path, model_type: str) -> dict[str, Any]:
    from litgpt.scripts import convert_lit_checkpoint

    from workbench.ml.checkpoint import load_config, load_state_dict

    copy = getattr(convert_lit_checkpoint, HF_ARCHES[model_type][1])
    out: dict[str, Any] = {}
    copy(load_config(model_dir), out, load_state_dict(model_dir))
    return {k: v.contiguous() for k, v in out.items()}


def hf_repo_files(model_dir: Path, model_type: str = "llama", *, chat_template: str | None = None,
                  weights: str = "safetensors", license: str = "apache-2.0") -> dict[str, bytes]:
    """A Hugging Face repository for the LitGPT model in `model_dir`."""
    import torch
    from safetensors.torch import save

    from workbench.ml.checkpoint import load_config

    sd = hf_state_dict(model_dir, model_type)
    files: dict[str, bytes] = {
        "config.json": json.dumps(hf_config(load_config(model_dir), model_type)).encode(),
        "tokenizer.json": (model_dir / "tokenizer.json").read_bytes(),
        "generation_config.json": (model_dir / "generation_config.json").read_bytes(),
        "README.md": f"---\nlicense: {license}\n---\n# tiny\n\nA tiny test model.\n".encode(),
        "LICENSE": b"MIT License\n",
    }
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    if chat_template:
        tok_config["chat_template"] = chat_template
    files["tokenizer_config.json"] = json.dumps(tok_config).encode()
    if weights == "safetensors":
        files["model.safetensors"] = save(sd, metadata={"format": "pt"})
    else:
        buf = io.BytesIO()
        torch.save(sd, buf)
        files["pytorch_model.bin"] = buf.getvalue()
    return files


def tiny_gguf(model_dir: Path, out: Path, chat_template: str | None = None) -> Path:
    """A small F32 llama GGUF of the LitGPT model, written with the gguf package (ChatML unless
    `chat_template` is given)."""
    import gguf
    import numpy as np

    from workbench.ml.checkpoint import load_config, load_state_dict
    from workbench.prompts import CHATML

    cfg = load_config(model_dir)
    sd = {k: v.float().numpy() for k, v in load_state_dict(model_dir).items()}
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    specials = {a["id"]: a["content"] for a in tok["added_tokens"]}
    by_id.update(specials)
    tokens, types = [], []
    for i in range(cfg.padded_vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(3 if i in specials else 1 if i in by_id else 5)  # control, normal, unused
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_query_groups)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_size)
    w.add_rope_freq_base(float(cfg.rope_base))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eos = tok["model"]["vocab"].get("<|endoftext|>", next(i for i, t in specials.items() if t == "<|endoftext|>"))
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_chat_template(chat_template or CHATML)

    def rope_rows(x: np.ndarray, heads: int) -> np.ndarray:
        # LitGPT rotates halves, llama.cpp adjacent pairs: permute rows per head.
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    hs, nq, nkv = cfg.head_size, cfg.n_head, cfg.n_query_groups
    w.add_tensor("token_embd.weight", sd["transformer.wte.weight"])
    w.add_tensor("output_norm.weight", sd["transformer.ln_f.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        q, k, v = np.split(sd[p + "attn.qkv.weight"], [nq * hs, nq * hs + nkv * hs])
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "norm_1.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", rope_rows(q, nq))
        w.add_tensor(f"blk.{i}.attn_k.weight", rope_rows(k, nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", np.ascontiguousarray(v))
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "attn.proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "norm_2.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.fc_1.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.fc_2.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


class EvilPickle:
    """Unpickling this would run code (create a directory); weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def hub_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The LitGPT models the test repositories are made from (the reference for conversions)."""
    base = tmp_path_factory.mktemp("hub-models")
    return {
        "main": make_tiny_model(base / "main", seed=0),
        "v1": make_tiny_model(base / "v1", seed=1),
        # Over 10 MiB, huggingface_hub's write chunk, so a cut transfer leaves bytes to resume from.
        "big": make_tiny_model(base / "big", seed=2, n_embd=512, n_head=8, n_query_groups=8,
                               intermediate_size=1536),
    }


@pytest.fixture(scope="module")
def hub_server(hub_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A running Hub look-alike with the test repositories; `.commits` names their commits."""
    import torch

    from workbench.prompts import CHATML

    base = tmp_path_factory.mktemp("hub-files")
    server = HubServer().start()
    commits: dict[str, str] = {}
    decoys = {"pytorch_model.bin": b"never fetched when safetensors exist",
              "modeling_tiny.py": b"raise SystemExit('repository code must never run')\n"}
    commits["llama@v1"] = server.add_repo("tiny/llama", hf_repo_files(hub_models["v1"], chat_template=CHATML),
                                          ref="v1")
    commits["llama"] = server.add_repo(
        "tiny/llama", {**hf_repo_files(hub_models["main"], chat_template=CHATML), **decoys},
        license="apache-2.0", downloads=1200, likes=7)
    big = tiny_gguf(hub_models["big"], base / "big-f32.gguf")
    commits["big"] = server.add_repo("tiny/big-gguf", {"big-F32.gguf": big}, license="mit", downloads=30)
    commits["bin"] = server.add_repo("tiny/llama-bin", hf_repo_files(hub_models["main"], weights="bin"))

    marker = base / "evil-ran"
    buf = io.BytesIO()
    torch.save({"model.embed_tokens.weight": EvilPickle(marker)}, buf)
    evil = {**hf_repo_files(hub_models["main"], weights="bin"), "pytorch_model.bin": buf.getvalue()}
    server.add_repo("tiny/evil-bin", evil)

    fancy = hf_repo_files(hub_models["main"])
    fancy["config.json"] = json.dumps({**json.loads(fancy["config.json"]), "architectures": ["FancyForCausalLM"],
                                       "auto_map": {"AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM"}}
                                      ).encode()
    fancy["modeling_fancy.py"] = b"raise SystemExit('repository code must never run')\n"
    server.add_repo("tiny/fancy", fancy)

    gguf_path = tiny_gguf(hub_models["main"], base / "tiny-f32.gguf")
    gguf_files = {"tiny-F32.gguf": gguf_path, "tiny-F32-copy-Q8_0.gguf": gguf_path, "README.md": "# tiny gguf\n"}
    commits["gguf"] = server.add_repo("tiny/llama-gguf", gguf_files, license="mit", downloads=500, likes=3)
    server.add_repo("tiny/gated-gguf", {"tiny-F32.gguf": gguf_path}, gated=True, tokens=("hf_granted",),
                    license="llama3.2", downloads=90)
    server.add_repo("tiny/huge", hf_repo_files(hub_models["main"]), claimed_sizes={"model.safetensors": 1 << 60})
    server.commits = commits  # type: ignore[attr-defined]
    server.evil_marker = marker  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The Hub look-alike as HF_ENDPOINT for CLI subprocesses, online, with no token and a clean log."""
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.log.clear()
    hub_server.drops.clear()
    hub_server.throttle_s_per_mib = 0.0
    return hub_server
