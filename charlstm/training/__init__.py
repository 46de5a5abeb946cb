"""One training run: its decisions (`run.py`), its set-up (`setup.py`), the loop (`trainer.py`) with its validations
and samples (`evaluation.py`) and saves (`checkpointing.py`), the budget and schedule, validation, `--size auto`,
resume, the loss, the figures it records."""
