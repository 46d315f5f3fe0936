"""The latent space every model here works in: Stable Diffusion's KL-VAE (sd-vae-ft-*).

An R-px RGB image is an (R/8) x (R/8) x 4 latent, multiplied by ``SD_LATENT_SCALE`` for training
(as DiT, U-ViT and DiM do). One definition, imported by the registry (a model's input size), the
models (the official checkpoints' latents), training (the VAE and the latent datasets) and the
measurements (FLOPs at an image size).
"""

LATENT_DOWNSAMPLE = 8  # pixels per latent position, on each side
LATENT_CHANNELS = 4
SD_LATENT_SCALE = 0.18215
