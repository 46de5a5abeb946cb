"""One training run: its decisions (`run.py`), the loop (`trainer.py`), the budget and schedule, validation, `--size
auto`, resume, the loss, the figures it records."""
