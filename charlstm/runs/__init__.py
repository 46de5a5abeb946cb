"""A run directory on disk: its files, finding runs and checkpoints, metrics and samples, the lock that keeps one
trainer per run, and a trained model read back from its checkpoint (`model_file.py`)."""
