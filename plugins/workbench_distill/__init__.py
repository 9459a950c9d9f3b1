"""Knowledge distillation (`workbench distill`): a LitGPT student trained on a teacher's top-k
next-token distributions, computed once and kept on disk, mixed with the hard labels.

The stage module stays light; the teacher pass and the training loop are imported inside `run()`.
"""
