"""Structured pruning stage: `workbench prune`.

- `stage`: options and input checks (light);
- `plan`: how many blocks, KV groups and MLP channels to remove (light);
- `prune`: importance on calibration text and the surgery on LitGPT weights;
- `heal`: the healing pass (LoRA or full), resumable.

Its result table is `workbench_evaluate.tradeoff`'s, shared with distillation.
"""
