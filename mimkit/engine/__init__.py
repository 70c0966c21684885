"""The training engine: one loop for every method, from a laptop CPU to many GPUs (torchrun + DDP)."""
