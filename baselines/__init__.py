"""DiT and U-ViT attention baselines (installed as dimbench.baselines)."""
