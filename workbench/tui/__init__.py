"""The terminal workbench: a Textual face over the core (`workbench` with no command).

The UI process never imports torch, litgpt or llama_cpp: runs happen in worker processes,
chat talks to `workbench chat --jsonl` and the doctor view reads `workbench doctor --json`.
"""
