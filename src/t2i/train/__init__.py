"""Training: the one trainer, DDP setup, and the run directory."""
