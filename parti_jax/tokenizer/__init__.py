"""ViT-VQGAN image tokenizer: model, quantizer, discriminator and losses."""
