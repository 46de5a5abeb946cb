"""What a training run writes: the checkpoint's payload, the save (latest.pt, best.pt, run.json) and the summary
run.json holds. A part of `Trainer` (trainer.py), whose state it reads: the model, optimizer, progress, carried
state, data, slices and run directory."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from charlstm.checkpoint import store as checkpoint
from charlstm.errors import CharlstmError
from charlstm.generate.starts import record_start_states
from charlstm.runs import directory as rundir
from charlstm.runtime.device import precision_name
from charlstm.training import budget as schedule
from charlstm.training import resume
from charlstm.training.summary import TrainResult, run_summary

# characters read before each record start state: on trained models, the first-character distribution from these
# states matched that of 1,024-character contexts (benchmarks/record_starts.py runs), at an eighth of the cost
START_STATE_CONTEXT = 128


class Checkpointing:
    """Trainer's saving and summaries (see trainer.py)."""

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything to resume; distributed, every rank must call it (it gathers hidden and RNG states)."""
        rng = resume.rng_state(self.device)
        if self.dist.enabled:
            rng["ranks"] = self.dist.gather_objects(resume.rng_state(self.device))
        return {
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "vocab": self.vocab.chars,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "hidden": self._all_rows_hidden(),
            "rng": rng,
            "corpus": self.corpus_summary(),
            **({"start_states": states} if (states := self._start_states()) is not None else {}),
        }

    def _start_states(self) -> list[torch.Tensor] | None:
        """For a record corpus: the states training has at K record boundaries (just before the end-of-record
        marker), which sampling starts each record from (see starts.py; rank 0 only: only it writes)."""
        eor = self.vocab.end_of_record if self.data.record_lengths is not None else None
        if eor is None or not self.dist.is_main:
            return None
        states = record_start_states(
            self.model, self.data.train, eor, context=START_STATE_CONTEXT, seed=self.config.seed
        )
        self.start_states = (self.progress.step, states)  # a sample at this step starts from them too
        return states

    def _all_rows_hidden(self) -> list[torch.Tensor]:
        """The carried state of all B stream rows, gathered from every rank, as CPU tensors."""
        if self.state is None:  # None on every rank at once: the state resets at the same step everywhere
            return []
        on_device = [s.detach() for s in (self.state if isinstance(self.state, tuple) else (self.state,))]
        return [t.cpu() for t in self.dist.gather_rows(on_device)]  # (layers, B, H) each

    def save(self, best: bool = False) -> None:
        """Every rank calls this (the payload is gathered); only rank 0 writes."""
        if not all(torch.isfinite(t).all() for t in self.model.parameters()):  # a NaN/inf step got through
            raise CharlstmError(
                f"the weights became NaN or infinite by step {self.progress.step}; stopped without saving them "
                f"(the last good checkpoint is kept); try a lower --lr (now {self.config.lr:g})"
            )
        started = time.perf_counter()
        with self._phase("saving"):
            self._tick()
            payload = self.checkpoint_payload()
            error = None
            if self.dist.is_main:
                try:
                    checkpoint.save_checkpoint(payload, self.run_dir / rundir.LATEST)
                    if best:
                        checkpoint.copy_checkpoint(self.run_dir / rundir.LATEST, self.run_dir / rundir.BEST)
                    rundir.write_run_json(self.run_dir, self.summary())
                except BaseException as exc:  # a full disk, say: every rank stops, not only rank 0
                    error = exc
            self.dist.settle(error, "saving a checkpoint")
        self.save_seconds = time.perf_counter() - started

    # --------------------------------------------------------------------------------- summaries

    def corpus_summary(self) -> dict[str, Any]:
        """Where the corpus came from, how to load it again, and its size in characters and records."""
        return {**self.corpus.summary(), **self.data.summary()}

    def summary(self) -> dict[str, Any]:
        """run.json's content (and the result's)."""
        return run_summary(
            corpus=self.corpus_summary(),
            model_config=asdict(self.model_config),
            train_config=asdict(self.config),
            vocab_size=len(self.vocab),
            params=self.model.num_params,
            progress=self.progress,
            validation=self.validation_summary(),
            device=str(self.device),
            precision=precision_name(self.amp),
            world_size=self.dist.world_size,
            threads=self.governor.current if self.governor is not None and self.governor.enabled else None,
        )

    def validation_summary(self) -> dict[str, Any]:
        """Which validation figure is which: the periodic one (best_val_loss, last_val_loss, metrics.jsonl's
        val_loss) scores a fixed slice; the final one (final_val_loss) the whole split or a larger slice."""
        return {
            "split_chars": len(self.data.val) - 1,
            "periodic_chars": self.periodic_slice.chars,
            "periodic_whole_split": self.periodic_slice.whole,
            "final_chars": self.final_slice.chars,
            # what the final evaluation scored: less than its slice when --max-time ended it early
            "final_scored_chars": self.final_scored[0] if self.final_scored else None,
            "final_whole_split": self.final_slice.whole if not self.final_scored else self.final_scored[1],
        }

    def result(self, stopped_by: str) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            stopped_by=stopped_by,
            summary=self.summary(),
            budget=schedule.budget_text(self.config),
            extend_with=schedule.extended_budget(self.config),
            resumed_from=str(self.resume.path) if self.resume else None,
        )
