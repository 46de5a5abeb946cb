"""A run directory on disk: its files, finding runs and checkpoints, metrics and samples, and the lock that keeps one
trainer per run."""
