"""Probes that read generated clips, metrics, and the AR-vs-diffusion comparison."""
