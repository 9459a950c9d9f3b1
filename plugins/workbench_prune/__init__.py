"""Structured pruning stage: `workbench prune`.

- `stage`: options and input checks (light);
- `plan`: how many blocks, KV groups and MLP channels to remove (light);
- `prune`: importance on calibration text and the surgery on LitGPT weights;
- `heal`: the healing pass (LoRA or full), resumable;
- `tradeoff`: parameters, size, perplexity and llama.cpp decode speed of two or more models,
  the table any stage that shrinks a model can show.
"""
