"""`workbench pretrain`: Llama-style pretraining with LitGPT and Lightning Fabric."""
