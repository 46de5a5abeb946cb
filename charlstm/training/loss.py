"""The training loss: summed cross-entropy over a window's real targets, in fp32, optionally compiled."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch
import torch.nn.functional as F

from charlstm.data.streams import IGNORE_INDEX
from charlstm.errors import CharlstmError


def window_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the real targets of a window, in fp32 whatever the logits' precision."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),  # (R*T, V)
        targets.reshape(-1),  # (R*T,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def compiled_loss(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`window_loss_sum` through torch.compile: the fp32 cast, log-softmax and NLL become fused kernels.

    The model itself stays eager: Dynamo refuses to trace nn.LSTM/GRU/RNN (it would skip the whole forward),
    and the recurrent stack is a single fused cuDNN/oneDNN call already."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise CharlstmError("--compile on CPU needs a C++ compiler (g++ or clang++) on the PATH")
    return torch.compile(window_loss_sum)
