"""The README's main job, shortened: `workbench demo --quick` from nothing to chatting, offline.

Every step is an ordinary run with lineage, the report gives each stage's before/after figure,
and a second run reuses every finished step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

# The whole lifecycle takes about 5 minutes on an idle 2-core machine; a busy one can double it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_quick_demo_improves_every_stage_and_reruns_from_cache(workspace):
    out = run_cli("demo", "--quick", "--json", timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    stages = {s["stage"]: s for s in report["stages"]}
    assert set(stages) == {"pretrain", "LoRA", "DPO"}
    assert all(s["before"] is not None and s["after"] is not None for s in stages.values())
    assert stages["pretrain"]["improved"] and stages["pretrain"]["after"] < stages["pretrain"]["before"] / 10
    assert stages["LoRA"]["improved"] and stages["LoRA"]["after"] >= 0.05
    # Scored on every held-out pair (225), DPO gains well over the interval's noise of a few pairs.
    assert stages["DPO"]["improved"] and stages["DPO"]["after"] >= stages["DPO"]["before"] + 0.05
    quants = {b["quant"]: b for b in report["gguf"]}
    assert set(quants) == {"f16", "q8_0", "q4_k_m"}
    assert quants["q4_k_m"]["size_bytes"] < quants["q8_0"]["size_bytes"] < quants["f16"]["size_bytes"]
    assert report["chat"] and all(turn["reply"] for turn in report["chat"])
    assert report["report"].endswith("report.md")
    markdown = Path(report["report"]).read_text(encoding="utf-8")
    assert "| pretrain | validation perplexity |" in markdown and "```" in markdown

    runs = json.loads(run_cli("runs", "ls", "--json").stdout)
    assert {r["stage"] for r in runs} >= {"data.prepare", "tokenizer.train", "pretrain", "finetune.lora",
                                          "dpo", "eval", "export"}
    assert all(r["status"] == "done" for r in runs)
    q4 = next(b for b in report["gguf"] if b["quant"] == "q4_k_m")
    lineage = json.loads(run_cli("models", "show", q4["id"], "--json").stdout)["lineage"]
    made_by = [e["run"]["stage"] for e in lineage if e["run"] and e["artifact"]["kind"] in ("gguf", "model")]
    assert made_by == ["export", "dpo", "finetune.lora", "pretrain"]

    again = run_cli("demo", "--quick", "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("reused run") == 9
    assert len(json.loads(run_cli("runs", "ls", "--json").stdout)) == len(runs)
