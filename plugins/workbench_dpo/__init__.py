"""Direct preference optimization (`workbench dpo`): a LoRA adapter trained on chosen/rejected
pairs against the same weights with the adapter switched off."""
