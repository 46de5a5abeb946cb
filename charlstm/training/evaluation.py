"""A training run's look at itself: the periodic validation and the final evaluation (scored by validation.py),
the seconds a time budget keeps for its end, and the samples shown while training. A part of `Trainer`
(trainer.py), whose state it reads and whose clock, phases and saves it uses."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from charlstm.config import SampleConfig
from charlstm.generate.sample import sample_text
from charlstm.generate.starts import record_start_states
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel
from charlstm.training import budget as schedule
from charlstm.training import validation
from charlstm.training.checkpointing import START_STATE_CONTEXT
from charlstm.training.summary import chars_per_second

# the end of a time budget is reserved for the final evaluation, its save and its sample: their measured cost
# times RESERVE_MARGIN plus RESERVE_SECONDS (a machine that slows down at the end gets a shorter final evaluation)
RESERVE_MARGIN, RESERVE_SECONDS = 1.25, 0.25
# the final evaluation takes at most this share of a time budget (the periodic slice at least): past it, the final
# slice is scored in part (a representative part, see validation.py), so that a short run does not spend a third
# of its budget scoring a large split
FINAL_SHARE = 0.1


class Evaluation:
    """Trainer's validation, end reserve and samples (see trainer.py)."""

    def _score(self, chosen: validation.Slice, deadline: float | None = None) -> validation.Scores | None:
        """Loss sums over a slice of the validation split (see validation.py), or None when a signal cut it short.
        Scored in fp32 whatever the training precision: the weights as saved, as sampling and `charlstm eval` read
        them (bf16 autocast moves the figure by a few thousandths of a nat/char). With a `deadline`, the scoring
        ends there (once a first batch of segments is scored). The bar follows it."""

        def progress(done: int, total: int) -> None:
            self._tick()
            self.emit("progress", {"done": done, "total": total, **self._clock()})

        return validation.score_slice(
            self.model,
            self.data.val,
            chosen,
            self.device,
            None,
            self.dist,
            should_abort=lambda: self.signals.received is not None,
            deadline=deadline,
            at_least=min(chosen.periodic, validation.ROWS),
            on_progress=progress,
        )

    def _clock(self) -> dict[str, Any]:
        """Where the run is, for the bar: the share of the whole budget spent, elapsed and remaining seconds."""
        p, c = self.progress, self.config
        remaining = max(0.0, c.max_time - p.elapsed_seconds) if c.max_time else None
        fraction = schedule.run_fraction(c, p, self.train_streams.num_targets)
        return {"fraction": fraction, "elapsed": p.elapsed_seconds, "remaining": remaining}

    def _final_deadline(self) -> float | None:
        """When the final evaluation must end (time.perf_counter()) for the run to end by --max-time: the time
        left less its save and sample (None without a time budget)."""
        if not self.config.max_time:
            return None
        self._tick()
        after = RESERVE_MARGIN * ((self.save_seconds or 0.0) + self.sample_seconds) * self._slowdown()
        return time.perf_counter() + self.config.max_time - self.progress.elapsed_seconds - after

    def _update_reserve(self) -> None:
        """The seconds a time budget keeps for its end (Progress.end_reserve_seconds), from the costs measured so
        far: scoring the final slice at the periodic validations' speed, a save and a sample. Every rank takes
        rank 0's figure (their decisions depend on it)."""
        c, p = self.config, self.progress
        if not c.max_time:
            return
        if self.seconds_per_segment is not None:
            per_segment = self.seconds_per_segment * self._slowdown()
        else:  # nothing measured yet: inference reads characters about 3 times as fast as training does
            speed = chars_per_second(p.chars_seen, p.train_seconds) or c.planned_chars_per_second or 0.0
            per_segment = (validation.SEGMENT + validation.BURN_IN) / (3 * speed) if speed else 0.0
        whole = per_segment * len(self.final_slice.segments)
        evaluation = min(whole, max(per_segment * self.final_slice.periodic, FINAL_SHARE * c.max_time))
        save = (self.save_seconds if self.save_seconds is not None else 0.0) * self._slowdown()
        reserve = RESERVE_MARGIN * (evaluation + save + self.sample_seconds * self._slowdown()) + RESERVE_SECONDS
        p.end_reserve_seconds = self.dist.agree(min(reserve, 0.5 * c.max_time))[0]

    def _slowdown(self) -> float:
        """How much slower the machine is now than when the costs were measured, from the training step's time
        (on a CPU shared with other processes, evaluation slows down as training does)."""
        now = self.governor.median() if self.governor is not None else None
        if now is None or self.step_seconds_then is None:
            return 1.0
        return min(20.0, max(0.25, now / self.step_seconds_then))

    def _evaluate_and_save(self, final: bool = False) -> None:
        """The periodic validation, then a save (best.pt too when it improved); at the end of the budget the final
        evaluation, whose first segments are the periodic slice's (one pass gives both figures). A signal during
        a validation leaves it pending (run first on resume) and saves."""
        p = self.progress
        chosen = self.final_slice if final else self.periodic_slice
        started = time.perf_counter()
        with self._phase("final evaluation" if final else "validating"):
            scores = self._score(chosen, deadline=self._final_deadline() if final else None)
        if scores is None:
            p.eval_pending = True
            self.save()
            return
        seconds = time.perf_counter() - started
        if scores.done:
            self.seconds_per_segment = seconds / scores.done
            self.step_seconds_then = self.governor.median() if self.governor is not None else None
        if not final:
            self.last_eval_seconds = seconds
        val_loss = scores.mean(0, chosen.periodic)
        p.eval_pending = False
        p.last_val_loss = val_loss
        p.last_eval_step, p.last_eval_fraction = p.step, self.budget_fraction()
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss = val_loss
        self._tick()
        row = {
            "step": p.step,
            "chars_seen": p.chars_seen,
            "train_loss": p.loss_sum / p.loss_count if p.loss_count else None,
            "val_loss": val_loss,
            "val_bits_per_char": val_loss / math.log(2),
            "val_chars": int(scores.counts[: chosen.periodic].sum()),
            "seconds": round(p.train_seconds, 3),
            "elapsed": round(p.elapsed_seconds, 3),
        }
        p.loss_sum, p.loss_count = 0.0, 0
        if final:
            whole = chosen.whole and scores.done == len(chosen.segments)
            p.final_val_loss = scores.mean()
            row.update(final_val_loss=p.final_val_loss, final_val_chars=scores.chars, final_whole=whole)
            self.final_scored = (scores.chars, whole)
            if scores.done < len(chosen.segments):
                self._notice(
                    f"the final evaluation scored {scores.chars:,} of {chosen.chars:,} characters to end within "
                    f"--max-time (the machine ran slower than the run measured)"
                )
        else:
            self._update_reserve()
        self.save(best=improved)
        if self.dist.is_main:
            rundir.append_metrics(self.run_dir, row)
        self.emit("validation", {"row": row, "improved": improved})
        if final:
            self.emit("validation", {"row": row, "improved": False, "final": True})
        if self.config.sample_every is None or (final and self.config.sample_every):
            self.sample_while_training()

    # ----------------------------------------------------------------------------------- samples

    def sample_while_training(self) -> None:
        """A short seeded sample of the model as it is now: emitted as a "sample" event and appended to
        samples.jsonl (rank 0 only; nothing else of the run changes, so a resumed run stays exact).

        It runs on a CPU copy of the weights in eval mode (no dropout), with charlstm's fast CPU sampler and
        its own seeded generator: the model, the optimizer and the training random state are not touched.
        The seed is the run's, the same at every sample, so that samples differ by what the model learned."""
        p, c = self.progress, self.config
        if not self.dist.is_main or self.sampled_at == p.step or self.signals.received is not None:
            return
        self.sampled_at = p.step
        started = time.perf_counter()
        with self._phase("sampling"):
            with torch.random.fork_rng(devices=[]):  # a new model's initial weights must not use the run's RNG
                model = CharRNN(self.model_config)
            model.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            model.eval()
            payload = {"start_states": self._sample_start_states(model)} if self.data.record_lengths is not None else {}
            loaded = LoadedModel(model=model, vocab=self.vocab, path=self.run_dir, payload=payload)
            config = SampleConfig(length=c.sample_length, temperature=c.sample_temp, prime=c.sample_prime, seed=c.seed)
            text = sample_text(loaded, config)[0]
        self.sample_seconds = time.perf_counter() - started
        self._tick()
        row = {
            "step": p.step,
            "chars_seen": p.chars_seen,
            "val_loss": p.last_val_loss if math.isfinite(p.last_val_loss) else None,
            "temperature": c.sample_temp,
            "text": text,
            "seconds": round(time.perf_counter() - started, 4),
        }
        rundir.append_sample(self.run_dir, row)
        self.emit("sample", {"row": row})

    def _sample_start_states(self, model: CharRNN) -> list[torch.Tensor] | None:
        """A record-trained model's start states at this step: those the save at this step computed, else
        computed now on the sample's CPU copy (from the step's weights alone, so a resumed run samples alike)."""
        eor = self.vocab.end_of_record
        if self.start_states is not None and self.start_states[0] == self.progress.step:
            return self.start_states[1]
        if eor is None:
            return None
        return record_start_states(model, self.data.train, eor, context=START_STATE_CONTEXT, seed=self.config.seed)
