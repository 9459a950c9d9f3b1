"""Device choice, the memory preflight, and what `workbench doctor` reports."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from workbench.errors import UserError
from workbench.hardware import estimate_training_memory, preflight


def small(**kw):
    base = dict(n_params=3_000_000, trainable_params=3_000_000, batch_size=8, seq_len=256, n_layer=3,
                n_embd=256, n_head=4, vocab_size=4096, precision="32-true")
    base.update(kw)
    return estimate_training_memory(**base)


def test_estimate_counts_adamw_state_and_shrinks_with_lora():
    full = small()
    assert full.weights == 12_000_000 and full.gradients == 12_000_000 and full.optimizer == 24_000_000
    lora = small(trainable_params=30_000)
    assert lora.optimizer == 240_000 and lora.total < full.total
    assert small(batch_size=16).activations == 2 * full.activations


def test_preflight_refuses_what_cannot_fit_unless_forced():
    huge = small(n_params=400_000_000_000, trainable_params=400_000_000_000)
    with pytest.raises(UserError, match=r"needs about .* but only .* is available; .*--force"):
        preflight(huge, "cpu")
    assert preflight(huge, "cpu", force=True)["estimate_bytes"] == huge.total
    assert preflight(small(), "cpu")["device"] == "cpu"


def test_doctor_reports_device_precision_llamacpp_and_disk():
    out = run_cli("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["torch"]["device"] == "cpu" and report["torch"]["precision"] == "32-true"
    assert report["torch"]["cpu_cores"] >= 1
    assert "AVX" in report["llama_cpp"]["system_info"] or "NEON" in report["llama_cpp"]["system_info"]
    assert report["disk_free"].endswith("B") and report["packages"]["litgpt"] != "not installed"
    assert "pretrain" in report["plugins"]
