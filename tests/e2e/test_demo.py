"""The README's main job, shortened: `workbench demo --quick` from nothing to chatting, offline.

Every step is an ordinary run with lineage, the report gives each stage's before/after figure,
and a second run reuses every finished step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from workbench.demo import CHAT_PROMPTS

# The whole lifecycle takes about 5 minutes on an idle 2-core machine; a busy one can double it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: Held-out figures the quick profile reaches, less a margin for run-to-run noise (see the report
#: table in README.md for the full profile's).
QUICK = {"exact_match": 0.5, "preference_accuracy": 0.85, "classification_accuracy": 0.95}


def test_quick_demo_convinces_and_reruns_from_cache(workspace):
    out = run_cli("demo", "--quick", "--json", timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    rows = {(s["stage"], s["metric"].split(" (")[0]): s for s in report["stages"]}
    assert all(s["before"] is not None and s["after"] is not None and s["ok"] for s in rows.values()), rows
    pretrain = rows["pretrain", "validation perplexity"]
    assert pretrain["after"] < pretrain["before"] / 10
    # Held-out figures, each with the margin the quick profile reaches on a 2-core CPU.
    assert rows["LoRA", "instruction exact match"]["after"] >= QUICK["exact_match"]
    assert rows["DPO", "preference accuracy"]["after"] >= QUICK["preference_accuracy"]
    assert rows["classify", "spam/ham accuracy"]["after"] >= QUICK["classification_accuracy"]
    # Forgetting is bounded: corpus perplexity stays within 2× of the pretrained model's.
    for stage in ("LoRA", "DPO"):
        forgetting = rows[stage, "corpus perplexity"]
        assert forgetting["after"] <= 2 * forgetting["before"], forgetting
    quants = {b["quant"]: b for b in report["gguf"]}
    assert set(quants) == {"f16", "q8_0", "q4_k_m"}
    assert quants["q4_k_m"]["size_bytes"] < quants["q8_0"]["size_bytes"] < quants["f16"]["size_bytes"]
    assert abs(quants["q4_k_m"]["ppl_change"]) <= 0.03
    # The closing chat asks the three fixed held-out questions and gets at least two right.
    assert [(t["prompt"], t["expected"]) for t in report["chat"]] == list(CHAT_PROMPTS)
    assert report["chat_correct"] >= 2 and report["chat_correct"] == sum(t["correct"] for t in report["chat"])
    assert report["report"].endswith("report.md")
    markdown = Path(report["report"]).read_text(encoding="utf-8")
    assert "| pretrain | validation perplexity |" in markdown and "```" in markdown
    assert "| DPO | corpus perplexity (forgetting) |" in markdown
    assert f"answered {report['chat_correct']} of 3 held-out questions correctly" in markdown

    runs = json.loads(run_cli("runs", "ls", "--json").stdout)
    assert {r["stage"] for r in runs} >= {"data.prepare", "tokenizer.train", "pretrain", "finetune.lora",
                                          "dpo", "eval", "export", "finetune.classify"}
    assert all(r["status"] == "done" for r in runs)
    q4 = next(b for b in report["gguf"] if b["quant"] == "q4_k_m")
    lineage = json.loads(run_cli("models", "show", q4["id"], "--json").stdout)["lineage"]
    made_by = [e["run"]["stage"] for e in lineage if e["run"] and e["artifact"]["kind"] in ("gguf", "model")]
    assert made_by == ["export", "dpo", "finetune.lora", "pretrain"]

    again = run_cli("demo", "--quick", "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("reused run") == 11
    assert len(json.loads(run_cli("runs", "ls", "--json").stdout)) == len(runs)
