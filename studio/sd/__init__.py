"""Diffusion-model specifics above the engine: output metadata (modelspec, sd_merge_recipe), the VAE slot, synthetic
real-layout checkpoints for tests and benchmarks. Key-name conversions live in studio.layout.sd_keys."""
