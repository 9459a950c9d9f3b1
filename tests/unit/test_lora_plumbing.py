"""LoRA plumbing: merging is exact, switching the adapter off gives the base model."""

import torch

from workbench.ml.checkpoint import load_model
from workbench.ml.lora import LoRASettings, adapters_disabled, load_lora_model, merged_state_dict


def test_merge_and_disable_match_base_and_adapter(tiny_model):
    settings = LoRASettings(r=4, alpha=8, dropout=0.0, targets=("query", "key", "value", "projection", "mlp"))
    model = load_lora_model(tiny_model, settings).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a fresh adapter is a no-op; make it do something
    x = torch.randint(0, 300, (1, 16))
    base = load_model(tiny_model)
    with torch.no_grad():
        with_adapter = model(x)
        with adapters_disabled(model):
            off = model(x)
        assert (off - base(x)).abs().max() < 1e-6
        assert (with_adapter - off).abs().max() > 1e-3
        base.load_state_dict(merged_state_dict(model))
        assert (base(x) - with_adapter).abs().max() < 1e-5
