"""A trained model read back from its checkpoint: `load_model` (the safe loader every reader goes through) and the
`LoadedModel` it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from charlstm.checkpoint.store import load_model_checkpoint
from charlstm.config import ModelConfig, from_dict
from charlstm.data.vocab import Vocab
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir


@dataclass
class LoadedModel:
    model: CharRNN
    vocab: Vocab
    path: Path
    payload: dict


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (or a run directory's best) safely and rebuild the model it describes."""
    file = rundir.resolve_checkpoint(Path(path), prefer=rundir.BEST)
    payload = load_model_checkpoint(file)  # configs, vocabulary and weight shapes checked
    vocab_chars = payload["vocab"]
    model = CharRNN(from_dict(ModelConfig, payload["model_config"]))
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return LoadedModel(model=model, vocab=Vocab(vocab_chars), path=file, payload=payload)
