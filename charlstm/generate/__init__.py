"""Writing text with a trained model: the next-character rule, fast one-character steppers, sampling, the interactive
session, record starts."""
