"""Shared model plumbing for the training, evaluation and export stages.

Every module here imports torch/litgpt at module level, so import these only inside a stage's
`run()` (or other code that already needs torch) — never from the CLI or TUI at start-up.
"""
