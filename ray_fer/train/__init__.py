"""Training: the Ray Train loop, per-method steps, losses and metrics."""
