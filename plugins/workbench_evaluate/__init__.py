"""Evaluation: `workbench eval` measures LitGPT checkpoints and GGUF files on the same inputs.

Light package: importing it (or `workbench_evaluate.stage`) pulls in no torch or llama_cpp. The
measuring modules are imported inside `run()`:

- `plan`: which models, data and tasks (store only);
- `backends`: LitGPT through torch and GGUF through llama.cpp behind one scoring interface;
- `tasks`: perplexity, multiple choice, generation, preference;
- `bias`: bias probes (sentence pairs that swap a group word; `biasfile` reads them, light);
- `judge`: LLM-as-judge with a local GGUF;
- `report`: the comparison table and the `eval-report` artifact.
"""
