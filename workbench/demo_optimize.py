"""The demo's optional steps (`workbench demo --with-optimize`): after DPO, the demo model is
distilled into a smaller student and pruned to 75% with a short LoRA heal, and the report says
what each bought and cost against the model it came from.

There is no pretrain preset smaller than the demo's `tiny`, so the student is the teacher's own
shape with one block fewer and a narrower MLP, written as a YAML file of `litgpt.Config` fields
(named by its content, so a changed shape is a changed step); the distill stage starts it from
the teacher's weights. The two stages measure perplexity each their own way, so a last step
evaluates the source and both smaller models in one `workbench eval` run, with the main eval
step's perplexity settings, and the report's rows take their perplexities from it: one figure
for the source everywhere. Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from workbench import locations
from workbench.demo import PRETRAIN_SEQ, PROFILES, Outputs, Step, steps

#: Steps per profile. Measured on the demo's `tiny` shape, quick profile: 8.5 s distilling and
#: 7.9 s pruning on a quiet 2-core CPU; with the student cut from the teacher, 23 s, 20 s and 6 s
#: for the closing eval on 2 cores that neighbours kept at a load of 6 to 8. Cut from the teacher,
#: 40 steps already leave the student at 0.87× the teacher's perplexity (a random start: 15×).
SIZES: dict[str, dict[str, int]] = {
    "full": {"distill_steps": 150, "heal_steps": 100},
    "quick": {"distill_steps": 40, "heal_steps": 40},
}
PRUNE_TARGET = 0.75
STUDENT_FIELDS = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "block_size",
                  "rotary_percentage", "parallel_residual", "bias", "norm_class_name", "mlp_class_name", "norm_eps",
                  "rope_base", "lm_head_bias")


def student_config(teacher_dir: Path) -> dict[str, Any]:
    """The teacher's shape with one block fewer (at least one) and two thirds of its MLP width,
    in steps of 256 where the width allows (llama.cpp's K-quants need row lengths of 256). The
    context stays the teacher's, so both are measured with the same windows."""
    teacher = yaml.safe_load((teacher_dir / "model_config.yaml").read_text(encoding="utf-8"))
    config = {k: teacher[k] for k in STUDENT_FIELDS if k in teacher}
    step = 256 if teacher["intermediate_size"] >= 512 else 32
    config["n_layer"] = max(1, teacher["n_layer"] - 1)
    config["intermediate_size"] = max(step, teacher["intermediate_size"] * 2 // 3 // step * step)
    return config


def student_file(config: dict[str, Any]) -> Path:
    text = yaml.safe_dump(config, sort_keys=True)
    path = locations.home() / "demo" / f"student-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def optimize_steps(profile: str, store: Any, model_step: str = "dpo", corpus_step: str = "corpus",
                   seq_len: int = PRETRAIN_SEQ) -> list[Step]:
    """Distill and prune the model of `model_step` on the pretrain dataset of `corpus_step`."""
    sizes = SIZES[profile]

    def distill(o: Outputs) -> dict[str, Any]:
        teacher = store.find_artifact(o[model_step]["model"])
        return {"teacher": teacher.id, "dataset": o[corpus_step]["dataset"],
                "student": str(student_file(student_config(teacher.path))),
                "max_steps": sizes["distill_steps"], "batch_size": 8, "max_seq_length": seq_len,
                "eval_every": sizes["distill_steps"], "checkpoint_every": sizes["distill_steps"],
                "name": "demo-distilled"}

    def prune(o: Outputs) -> dict[str, Any]:
        return {"model": o[model_step]["model"], "calibration": o[corpus_step]["dataset"], "target": PRUNE_TARGET,
                "heal": "lora", "max_steps": sizes["heal_steps"], "batch_size": 8, "max_seq_length": seq_len,
                "warmup_steps": max(1, sizes["heal_steps"] // 10), "eval_every": sizes["heal_steps"],
                "checkpoint_every": sizes["heal_steps"], "name": "demo-pruned"}

    def compare(o: Outputs) -> dict[str, Any]:
        return {"models": [o[model_step]["model"], o["distill"]["model"], o["prune"]["model"]],
                **perplexity_settings(profile, o), "tasks": ["perplexity"], "name": "demo-smaller-models"}

    return [
        Step("distill", "Distill the DPO model into a smaller student", "distill", distill),
        Step("prune", f"Prune the DPO model to {PRUNE_TARGET:.0%} of its parameters, LoRA heal", "prune", prune),
        Step("smaller", "Measure the source and both smaller models on the same held-out windows", "eval", compare),
    ]


def perplexity_settings(profile: str, o: Outputs) -> dict[str, Any]:
    """The main eval step's perplexity data, document limit and windows, so the source's figure
    is the one the report's headline table gives it."""
    main = next(s for s in steps(PROFILES[profile]) if s.key == "eval").options(o)
    limits = [x for x in main.get("limits", []) if x.startswith("perplexity=")]
    return {k: v for k, v in {**main, "limits": limits}.items()
            if k in ("dataset", "limit", "limits", "context", "stride") and v not in (None, [])}


def optimize_rows(state: dict[str, Any], store: Any) -> list[dict[str, Any]]:
    """What each optional step bought and cost against its source, all from the one eval run of
    the `smaller` step: the same windows for every model, so one perplexity for the source."""
    entry = state.get("smaller")
    if not entry:
        return []
    report_dir = store.find_artifact(entry["outputs"]["eval-report"]).path
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    metrics, footprint = report["metrics"], report["footprint"]
    source = report["models"][0]["id"]
    rows = []
    for key, method in (("distill", "distilled"), ("prune", f"pruned to {PRUNE_TARGET:.0%}")):
        model = state.get(key, {}).get("outputs", {}).get("model")
        if model not in metrics:
            continue
        rows.append({"stage": key, "method": method, "model": model,
                     "params": footprint[model]["params"], "source_params": footprint[source]["params"],
                     "size_bytes": footprint[model]["size_bytes"], "source_size_bytes": footprint[source]["size_bytes"],
                     "perplexity": metrics[model].get("perplexity"),
                     "source_perplexity": metrics[source].get("perplexity"),
                     "perplexity_on": measured_on(report, source, entry["run_id"])})
    return rows


def measured_on(report: dict[str, Any], source: str, run_id: str) -> str:
    """What the perplexities were measured on, in a sentence for the report."""
    done = report["details"][source]["perplexity"]
    data = report["data"].get("pretrain", {}).get("name", "the corpus")
    limit = report["settings"].get("limits", {}).get("perplexity")
    docs = f"at most the first {limit} documents of" if limit else "all of"
    return (f"Perplexity of the source and both smaller models from one eval run ({run_id}), on the same "
            f"{done['tokens_scored']:,} tokens of {docs} {data}'s validation split: {done['windows']} windows "
            f"of {done['context']} tokens, {done['stride']} apart.")
