"""A training run's set-up, apart from the loop (trainer.py): the data read and checked, the model and its
optimiser built, and a resumed run put back where its checkpoint left it."""

from __future__ import annotations

from pathlib import Path

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.corpus import Corpus
from charlstm.data.streams import Streams
from charlstm.data.tokens import TokenData, check_trainable, prepare_tokens
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import CharRNN, State
from charlstm.runs import directory as rundir
from charlstm.runtime.distributed import Distributed
from charlstm.training import budget as schedule
from charlstm.training import resume
from charlstm.training.budget import Progress
from charlstm.training.events import EventSink


def prepare_data(
    corpus: Corpus,
    config: TrainConfig,
    resumed: resume.Resume | None,
    run_dir: Path,
    dist: Distributed,
    emit: EventSink,
) -> TokenData:
    """The corpus as ids in a compact dtype (memory-mapped for a large corpus), split on a record boundary, in a
    resumed run's vocabulary; with several ranks, rank 0 encodes (and caches) first, and the others then reuse its
    cache. Refuses a corpus too small to train on, and a --sample-prime the corpus cannot write (before --size auto
    measures anything)."""
    saved_vocab = Vocab(resumed.payload["vocab"]) if resumed else None
    data = dist.in_turn(lambda: prepare_tokens(corpus, config.val_frac, vocab=saved_vocab, cache_dir=run_dir))
    for note in data.notes:
        emit("note", {"text": note})
    distinct = [c for c in data.vocab.chars if c] if saved_vocab is None else None  # a saved vocabulary says nothing
    check_trainable(len(data.ids), distinct, config.val_frac)
    unknown = data.vocab.unknown(config.sample_prime) if config.sample_every != 0 else []
    if unknown:
        raise CharlstmError(
            "--sample-prime has characters the corpus does not have: " + " ".join(repr(c) for c in unknown[:20])
        )
    return data


def check_validation_split(val_chars: int, dist: Distributed) -> None:
    """A validation split with a target for every rank, or one CharlstmError."""
    if val_chars < max(2, dist.world_size + 1):
        processes = f" for {dist.world_size} processes" if dist.enabled else ""
        raise CharlstmError(
            f"validation split too small ({val_chars} characters){processes}; add text or raise --val-frac"
        )


def build_model(
    model_config: ModelConfig, config: TrainConfig, device: torch.device, dist: Distributed
) -> tuple[CharRNN, torch.nn.Module, torch.optim.Optimizer]:
    """The model, seeded (the same initial weights on every rank), what a training step calls (DDP around it with
    several ranks; the bare model is what checkpoints and evaluation use) and its AdamW."""
    torch.manual_seed(config.seed)
    model = CharRNN(model_config).to(device)
    if dist.rank > 0:
        torch.manual_seed(config.seed + dist.rank)  # the same weights, its own dropout masks
    return model, _wrap(model, dist, device), _optimizer(model, config)


def _wrap(model: CharRNN, dist: Distributed, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several ranks."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _optimizer(model: CharRNN, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, weight decay on the matrices but the embedding (two groups, in that order)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.startswith("embed") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)


def restore_run(
    resumed: resume.Resume,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    streams: Streams,
    config: TrainConfig,
    run_dir: Path,
    device: torch.device,
    dist: Distributed,
) -> tuple[Progress, State | None, list[str]]:
    """A resumed run where its checkpoint left it: weights, optimiser, progress, carried and random state
    (resume.py); the evaluations and samples recorded after that checkpoint dropped; the learning-rate schedule
    re-planned when the budget or the rate changed. Returns the progress, this rank's carried state and the
    notices to give."""
    progress, state, notices = resume.restore(resumed, model, optimizer, streams, device, dist)
    if dist.is_main:
        rows = [r for r in rundir.read_metrics(run_dir) if r.get("step", 0) <= progress.step]
        rundir.rewrite_metrics(run_dir, rows)  # drop evaluations made after this checkpoint
        samples = [r for r in rundir.read_samples(run_dir) if r.get("step", 0) <= progress.step]
        rundir.rewrite_samples(run_dir, samples)  # and the samples
    replanned = schedule.replan(resumed.train_config, config, progress, streams.num_targets)
    return progress, state, notices + ([replanned] if replanned else [])
