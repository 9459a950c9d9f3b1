"""`workbench download`: models from the Hugging Face Hub, ready for every later stage."""
