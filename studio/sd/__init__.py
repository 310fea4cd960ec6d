"""Diffusion-model specifics: ldm ↔ diffusers names, output metadata (modelspec, sd_merge_recipe), the VAE slot."""
