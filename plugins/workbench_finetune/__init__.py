"""Finetuning stages: LoRA instruction tuning (`finetune.lora`), sequence classification
(`finetune.classify`) and the `predict` command for trained classifiers.

The stage module (`stage`) stays light; the training code lives in `lora` and `classifier` and is
imported inside `run()`.
"""
