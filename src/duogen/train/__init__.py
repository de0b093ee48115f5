"""The training engine (single process, torchrun DDP, DeepSpeed ZeRO) and recipes."""
