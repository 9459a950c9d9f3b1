"""Chat with local models, offline: `workbench chat` (terminal REPL and a JSON-lines protocol for
the TUI) and `workbench serve` (an OpenAI-compatible HTTP endpoint).

Two engines sit behind one interface (`workbench_chat.engine`): GGUF files through llama.cpp and
LitGPT checkpoints through torch. This package's top level stays light; the engines import
llama_cpp and torch only when a model is opened.
"""
