"""The process's surroundings: atomic file writes, the device and precision, several processes (torchrun), signals, CPU
threads."""
