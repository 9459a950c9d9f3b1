"""The shared fixtures build what the stage tests rely on."""

import torch

from workbench.ml.checkpoint import load_model, load_tokenizer


def test_tiny_model_loads_and_tokenizes(tiny_model):
    model = load_model(tiny_model)
    tok = load_tokenizer(tiny_model)
    ids = tok.encode("The quick brown fox")
    logits = model(ids.unsqueeze(0))
    assert logits.shape[-1] == model.config.padded_vocab_size
    assert torch.isfinite(logits).all()
    assert tok.decode(ids) == "The quick brown fox"
