"""The demo's optional steps (`workbench demo --with-optimize`): after DPO, the demo model is
distilled into a smaller student and pruned to 75% with a short LoRA heal, and the report says
what each bought and cost against the model it came from.

There is no pretrain preset smaller than the demo's `tiny`, so the student is the teacher's own
shape with one block fewer and a narrower MLP, written as a YAML file of `litgpt.Config` fields
(named by its content, so a changed shape is a changed step). Light module: no torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from workbench import locations
from workbench.demo import PRETRAIN_SEQ, Outputs, Step

#: Steps per profile. Measured on the demo's `tiny` shape, quick profile: 8.5 s distilling and
#: 7.9 s pruning on a quiet 2-core CPU, about 150 s together when neighbours kept it busy, which
#: is why they are not longer.
SIZES: dict[str, dict[str, int]] = {
    "full": {"distill_steps": 150, "heal_steps": 100},
    "quick": {"distill_steps": 40, "heal_steps": 40},
}
PRUNE_TARGET = 0.75
STUDENT_FIELDS = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "block_size",
                  "rotary_percentage", "parallel_residual", "bias", "norm_class_name", "mlp_class_name", "norm_eps",
                  "rope_base", "lm_head_bias")


def student_config(teacher_dir: Path, seq_len: int) -> dict[str, Any]:
    """The teacher's shape with one block fewer (at least one) and two thirds of its MLP width,
    in steps of 256 where the width allows (llama.cpp's K-quants need row lengths of 256)."""
    teacher = yaml.safe_load((teacher_dir / "model_config.yaml").read_text(encoding="utf-8"))
    config = {k: teacher[k] for k in STUDENT_FIELDS if k in teacher}
    step = 256 if teacher["intermediate_size"] >= 512 else 32
    config["n_layer"] = max(1, teacher["n_layer"] - 1)
    config["intermediate_size"] = max(step, teacher["intermediate_size"] * 2 // 3 // step * step)
    config["block_size"] = min(teacher.get("block_size", seq_len), seq_len)
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
                "student": str(student_file(student_config(teacher.path, seq_len))),
                "max_steps": sizes["distill_steps"], "batch_size": 8, "max_seq_length": seq_len,
                "eval_every": sizes["distill_steps"], "checkpoint_every": sizes["distill_steps"],
                "name": "demo-distilled"}

    def prune(o: Outputs) -> dict[str, Any]:
        return {"model": o[model_step]["model"], "calibration": o[corpus_step]["dataset"], "target": PRUNE_TARGET,
                "heal": "lora", "max_steps": sizes["heal_steps"], "batch_size": 8, "max_seq_length": seq_len,
                "warmup_steps": max(1, sizes["heal_steps"] // 10), "eval_every": sizes["heal_steps"],
                "checkpoint_every": sizes["heal_steps"], "name": "demo-pruned"}

    return [
        Step("distill", "Distill the DPO model into a smaller student", "distill", distill),
        Step("prune", f"Prune the DPO model to {PRUNE_TARGET:.0%} of its parameters, LoRA heal", "prune", prune),
    ]


def optimize_rows(state: dict[str, Any], store: Any) -> list[dict[str, Any]]:
    """What each optional step bought and cost against its source, from the run's own figures."""
    rows = []
    for key, method in (("distill", "distilled"), ("prune", f"pruned to {PRUNE_TARGET:.0%}")):
        entry = state.get(key)
        if not entry:
            continue
        result = store.get_run(entry["run_id"]).result or {}
        measured = result.get("measured") or []
        if len(measured) < 2:
            continue
        source, final = measured[0], measured[-1]
        rows.append({"stage": key, "method": method, "model": result.get("model"),
                     "params": final["params"], "source_params": source["params"],
                     "size_bytes": final["size_bytes"], "source_size_bytes": source["size_bytes"],
                     "perplexity": final["ppl"], "source_perplexity": source["ppl"]})
    return rows
