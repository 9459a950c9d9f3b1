"""How a model directory stores its weights: once per format, tied weights once in lit_model.pth,
and both LitGPT's own loader and ours reading back the model that was saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_tokenizer, tiny_llama_config


@pytest.fixture
def tied_model(tmp_path: Path):
    """A tiny Llama whose output layer is its embedding (as Llama 3.2 1B's is), saved."""
    import torch
    from litgpt import GPT

    from workbench.ml.checkpoint import save_model_dir

    tok = make_tokenizer(tmp_path / "tok")
    config = tiny_llama_config(324, n_embd=128, padded_vocab_size=1024)  # the embedding dominates
    torch.manual_seed(0)
    model = GPT(config).eval()
    model.lm_head.weight = model.transformer.wte.weight
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    out = save_model_dir(tmp_path / "model", sd, config, tokenizer_dir=tok)
    ids = torch.randint(0, 324, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids)
    return out, ids, expected


def test_tied_weights_are_stored_once_in_lit_model_pth(tied_model) -> None:
    model_dir, _, _ = tied_model
    embedding = 1024 * 128 * 4
    st, pth = (model_dir / "model.safetensors").stat().st_size, (model_dir / "lit_model.pth").stat().st_size
    # safetensors cannot share memory between tensors, so it holds the embedding twice.
    assert pth < st - 0.9 * embedding, (pth, st)


def test_litgpt_loads_lit_model_pth_as_its_scripts_do(tied_model) -> None:
    import lightning as L
    import torch
    from litgpt import GPT
    from litgpt.utils import load_checkpoint

    from workbench.ml.checkpoint import load_config

    model_dir, ids, expected = tied_model
    model = GPT(load_config(model_dir))
    load_checkpoint(L.Fabric(accelerator="cpu", devices=1), model, model_dir / "lit_model.pth", strict=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), expected)


@pytest.mark.parametrize("keep", ["model.safetensors", "lit_model.pth"])
def test_either_file_alone_loads_the_same_untied_model(tied_model, keep: str) -> None:
    import torch

    from workbench.ml.checkpoint import load_model

    model_dir, ids, expected = tied_model
    for name in ("model.safetensors", "lit_model.pth"):
        if name != keep:
            (model_dir / name).unlink()
    model = load_model(model_dir)
    with torch.no_grad():
        assert torch.equal(model(ids), expected)
    # Training must be free to move the output layer away from the embedding.
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
