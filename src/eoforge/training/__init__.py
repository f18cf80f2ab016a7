"""Training: the UNet, its training loop and runtime, the random forest baseline, metrics."""
