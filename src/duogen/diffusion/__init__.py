"""Noise schedules, samplers, denoisers (U-Net, video U-Net, DiT) and latent diffusion."""
