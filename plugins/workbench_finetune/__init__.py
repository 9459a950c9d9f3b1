"""Finetuning stages: LoRA instruction tuning (`finetune.lora`), sequence classification
(`finetune.classify`) and the `predict` command for trained classifiers.

The stage modules stay light; the training code lives in `lora_train` and `classifier` and is
imported inside `run()`.
"""
