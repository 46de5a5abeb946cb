"""Resuming a run: find its checkpoint, load it once, merge its configs with the flags given, rebuild its corpus,
and restore every piece of its state (weights, optimizer, progress, carried hidden state, random numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from charlstm.checkpoint import store as checkpoint
from charlstm.config import CorpusConfig, ModelConfig, TrainConfig, from_dict
from charlstm.data.corpus import DEFAULT_CORPUS_NAME, Corpus, corpus_name, default_corpus, load_corpus
from charlstm.data.streams import Streams
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import CharRNN, State, state_from_list
from charlstm.runs import directory as rundir
from charlstm.runtime.distributed import Distributed
from charlstm.training.budget import BUDGET_FIELDS, Progress

# Flags that fix the data layout and the architecture: on resume the checkpoint's values win (--size too: the
# shape it chose is the checkpoint's).
LAYOUT_FIELDS = ("batch_size", "seq_len", "val_frac", "seed", "encoding", "size")
ARCH_FIELDS = ("cell", "layers", "hidden", "embed", "dropout", "init", "forget_bias")


@dataclass
class Resume:
    """A checkpoint to continue from, loaded (and checked) once."""

    source: Path  # what was given: a run directory or a checkpoint file
    path: Path  # the checkpoint file
    payload: dict[str, Any]

    def run_dir(self, default: Path | str) -> Path:
        """Where the resumed run writes: its own directory (a run directory, or the one holding latest.pt or
        best.pt), else `default` (a checkpoint file from elsewhere starts a run there)."""
        return rundir.run_dir_for(Path(default), self.source)

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.payload["model_config"])

    @property
    def train_config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.payload.get("train_config", {}))


def find(resume: str | Path, corpus_paths: list[Path] | None = None, out_dir: Path | None = None) -> Path:
    """The run or checkpoint that `--resume [PATH]` names: PATH itself, or for a bare `--resume` ("auto") the
    run in --out, else in the default directory of the corpus given (or of the built-in corpus)."""
    if str(resume) != "auto":
        target = Path(resume)
        if not target.exists():
            raise CharlstmError(f"--resume: no such run or checkpoint: {target}")
        return target
    if out_dir is not None:
        target = Path(out_dir)
    elif corpus_paths:
        target = rundir.DEFAULT_ROOT / corpus_name(corpus_paths)
    else:
        target = rundir.DEFAULT_ROOT / DEFAULT_CORPUS_NAME
    if not (target / rundir.LATEST).exists():
        raise CharlstmError(f"--resume: no checkpoint to resume in {target}/ (train first, or give --resume PATH)")
    return target


def load(resume_from: Path) -> Resume:
    """A run directory's latest.pt (or a given .pt file), loaded through the safe reader."""
    path = rundir.resolve_checkpoint(Path(resume_from), prefer=rundir.LATEST)
    return Resume(source=Path(resume_from), path=path, payload=checkpoint.load_model_checkpoint(path))


def corpus_of(resume: Resume, encoding: str) -> Corpus:
    """The corpus the run was trained on, loaded again from the sources its checkpoint records."""
    info = resume.payload.get("corpus") or {}
    if info.get("name") == DEFAULT_CORPUS_NAME:
        return default_corpus()
    config = from_dict(CorpusConfig, info["config"]) if info.get("config") else None
    sources = [Path(s) for s in (config.paths if config else info.get("sources", []))]
    if not sources:
        raise CharlstmError("the checkpoint does not record its corpus; give the corpus path")
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise CharlstmError(
            f"the run's corpus {', '.join(missing)} is not there any more (paths are relative to where training "
            f"started); give it: charlstm train CORPUS --resume {resume.source}"
        )
    return load_corpus(config or CorpusConfig(paths=[str(s) for s in sources], encoding=encoding))


def merge_configs(
    resume: Resume, model_config: ModelConfig, train_config: TrainConfig, explicit: set[str]
) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """The checkpoint's architecture and data layout win (a flag that disagrees gets a notice); other flags
    given explicitly replace the saved values; a budget flag replaces the saved budget as a whole."""
    saved_model, saved_train = resume.model_config, resume.train_config
    notices = []
    for name in ARCH_FIELDS:
        mine, theirs = getattr(model_config, name), getattr(saved_model, name)
        if name in explicit and mine != theirs:
            notices.append(f"--{name.replace('_', '-')} {mine} differs from the checkpoint's {theirs}; using {theirs}")
    merged = saved_train
    for name in asdict(train_config):
        if name not in explicit:
            continue
        mine, theirs = getattr(train_config, name), getattr(saved_train, name)
        if name not in LAYOUT_FIELDS:
            merged = replace(merged, **{name: mine})
        elif mine != theirs:
            notices.append(f"--{name.replace('_', '-')} {mine} differs from the checkpoint's {theirs}; using {theirs}")
    if explicit.intersection(BUDGET_FIELDS):
        merged = replace(merged, **{b: getattr(train_config, b) for b in BUDGET_FIELDS})
    return saved_model, merged, notices


def restore(
    resume: Resume,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    streams: Streams,
    device: torch.device,
    dist: Distributed,
) -> tuple[Progress, State | None, list[str]]:
    """Load the weights and optimizer state, and return the progress record, this rank's carried hidden state
    and any notices. A checkpoint that does not fit the model is one CharlstmError."""
    payload, notices = resume.payload, []
    try:
        model.load_state_dict(payload["model"])
        if payload.get("optimizer") is not None:
            optimizer.load_state_dict(payload["optimizer"])
            _check_optimizer_state(optimizer)
        else:  # weights only (e.g. shared without its optimizer): training goes on, Adam's moments start at zero
            notices.append("the checkpoint holds no optimizer state; AdamW starts afresh from its weights")
        progress = from_dict(Progress, payload.get("progress", {}))
        if "elapsed_seconds" not in payload.get("progress", {}):  # written before the wall clock was kept
            progress.elapsed_seconds = progress.train_seconds
        if not 0 <= progress.position < len(streams):
            progress.position = 0
        state = None
        hidden = payload.get("hidden") or []  # every stream row's state, (layers, B, H) each
        if _hidden_fits(hidden, model.config, streams.batch):
            mine = [h[:, streams.rows].float() for h in hidden]  # (layers, R, H): this rank's rows
            state = state_from_list(mine, model.config.cell, device)
        restore_rng(payload.get("rng", {}), device, dist)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, CharlstmError) as exc:
        raise CharlstmError(f"{resume.path} cannot be resumed: {str(exc).splitlines()[0]}") from None
    return progress, state, notices


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random-number state, as a checkpoint keeps it."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(rng: dict[str, Any], device: torch.device, dist: Distributed) -> None:
    """Each rank's own RNG state when the number of ranks is unchanged; with another number, rank 0 takes the
    saved rank 0's and the other ranks keep their fresh seeds (only their dropout masks differ)."""
    per_rank = rng.get("ranks") or [rng]
    if len(per_rank) == dist.world_size:
        mine = per_rank[dist.rank]
    elif dist.is_main:
        mine = rng
    else:
        return
    if "torch" in mine:
        torch.set_rng_state(mine["torch"])
    cuda = mine.get("cuda")
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict checks parameter counts, not shapes: a mismatched moment would crash at the first step."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CharlstmError(
                    f"optimizer {key} has shape {tuple(value.shape)} for a weight of {tuple(param.shape)}"
                )


def _hidden_fits(hidden: list, config: ModelConfig, batch: int) -> bool:
    """Whether a saved hidden state can continue: a state for another batch size is dropped (a fresh start of
    the streams); one whose shape contradicts the model is refused."""
    if not hidden:
        return False
    if not isinstance(hidden, list) or not all(isinstance(h, torch.Tensor) for h in hidden):
        raise CharlstmError("its hidden state is not a list of tensors")
    if any(h.dim() != 3 for h in hidden):
        raise CharlstmError(
            f"its hidden state has shapes {[tuple(h.shape) for h in hidden]}, not (layers, batch, hidden)"
        )
    if hidden[0].shape[1] != batch:
        return False
    expected = [(config.layers, batch, config.hidden)] * config.state_tensors
    if [tuple(h.shape) for h in hidden] != expected:
        raise CharlstmError(
            f"its hidden state has shapes {[tuple(h.shape) for h in hidden]}, the model needs {expected}"
        )
    return True
