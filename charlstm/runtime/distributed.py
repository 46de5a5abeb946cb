"""Multi-process training under `torchrun`: process-group set-up, each rank's share of the streams, and the
few collectives the trainer needs (agreeing on when to stop, summing losses, gathering the hidden state).

One process per device. Rank r trains rows [r*B/W, (r+1)*B/W) of the B streams; DistributedDataParallel
averages the gradients, and each rank scales its summed loss by W / (real targets of the whole window), so
the averaged gradient is exactly the single-process gradient of the mean loss over all B rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from charlstm.errors import CharlstmError, PeerFailedError

T = TypeVar("T")


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (for the CLI: only rank 0 prints)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the ranks; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # a gloo group for host-side agreement (None: the default group, already gloo)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: int) -> slice | None:
        """This rank's share of the `batch` stream rows (None: all of them)."""
        if not self.enabled:
            return None
        if batch % self.world_size:
            raise CharlstmError(
                f"--batch-size {batch} does not split evenly over {self.world_size} processes; use a batch size "
                f"that is a multiple of {self.world_size} (resuming: a number of processes that divides {batch})"
            )
        share = batch // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    # -------------------------------------------------------------------------------- collectives

    def agree(self, seconds: float, *flags: bool) -> tuple[float, ...]:
        """Rank 0's clock, and each flag raised on any rank: one small host-side all-reduce.

        Every rank must take the same decisions (stop, evaluate, learning rate from the time budget), so the
        time-dependent ones use rank 0's clock and a signal seen by any rank stops them all at the same step.
        """
        if not self.enabled:
            return (seconds, *flags)
        values = torch.tensor([seconds if self.is_main else 0.0, *(float(f) for f in flags)], dtype=torch.float64)
        torch_dist.all_reduce(values, group=self.control)
        agreed = values.tolist()
        return (agreed[0], *(v > 0 for v in agreed[1:]))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the ranks (on the training device)."""
        if self.enabled:
            torch_dist.all_reduce(tensor)
        return tensor

    def gather_rows(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each (layers, B/W, H) tensor of every rank -> the (layers, B, H) tensor of all rows, in rank order."""
        if not self.enabled:
            return tensors
        gathered = []
        for tensor in tensors:
            tensor = tensor.contiguous()
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            torch_dist.all_gather(parts, tensor)
            gathered.append(torch.cat(parts, dim=1))
        return gathered

    def gather_objects(self, obj: Any) -> list[Any]:
        """One picklable object from every rank (host side; for RNG states)."""
        if not self.enabled:
            return [obj]
        objects: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(objects, obj, group=self.control)
        return objects

    def in_turn(self, work: Callable[[], T]) -> T:
        """`work()` once on every rank: rank 0 first, then the first rank of each other node, then the rest.
        For work that fills a cache on disk (the encoded corpus): one process per filesystem builds it, and
        the others find it built instead of racing to write the same file.

        After each turn the ranks settle whether it failed (a barrier as well): if the work raised on any rank
        (a bad corpus, say), every rank stops there, instead of the others waiting for a rank that left.
        """
        if not self.enabled:
            return work()
        first = self.rank == 0
        turns = (first, not first and self.local_rank == 0, not first and self.local_rank != 0)
        result = None
        for mine in turns:
            error: BaseException | None = None
            if mine:
                try:
                    result = work()
                except BaseException as exc:  # re-raised by settle, once the other ranks know
                    error = exc
            self.settle(error, "preparing the corpus")
        return result  # type: ignore[return-value]

    def settle(self, error: BaseException | None, doing: str) -> None:
        """After work only some ranks did (or that may fail on some ranks only): all ranks learn whether it
        failed anywhere, and all raise if it did: the failed rank its own error, the others PeerFailedError.
        A barrier as well. Single process: raises `error` if there is one."""
        failed = error is not None
        if self.enabled:
            _, failed = self.agree(0.0, failed)
        if error is not None:
            raise error
        if failed:
            raise PeerFailedError(f"another process failed while {doing} (it says why)")

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier(group=self.control)


SINGLE = Distributed()


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun with more than one process.

    Returns this rank's context and its device (on CUDA: the GPU of LOCAL_RANK). Single process: (SINGLE, device).
    """
    world = launched_world_size()
    if world <= 1:
        return SINGLE, device
    if device.type not in ("cuda", "cpu"):
        raise CharlstmError(f"multi-process training runs on CUDA GPUs or on CPU, not on {device.type}")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CharlstmError(
                f"rank {rank} wants GPU {local_rank} but this node has {torch.cuda.device_count()}; "
                f"start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    control = torch_dist.new_group(backend="gloo") if backend != "gloo" else None
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, control=control), device


def teardown(dist: Distributed) -> None:
    """Wait for every rank (rank 0 may still be writing its last checkpoint), then leave the group."""
    if dist.enabled and torch_dist.is_initialized():
        dist.barrier()
        _destroy_group()


def abandon() -> None:
    """Leave the process group at once, after an error (no barrier: another rank may have gone already)."""
    if torch_dist.is_initialized():
        _destroy_group()


GLOO_SETTLE_SECONDS = 0.2


def _destroy_group() -> None:
    """destroy_process_group, after giving gloo's worker threads a moment without the GIL.

    A gloo worker frees each finished collective (its tensors, whose Python objects need the GIL) just after
    the caller's wait returns. If the group is destroyed first, its destructor joins that worker while
    holding the GIL, and the two wait on each other for ever (seen: 2 runs in about 27 of a 2-process test
    hung there, in ~ProcessGroupGloo -> std::thread::join / ~AsyncWork -> gil_scoped_acquire). Sleeping
    releases the GIL so the worker can finish; callers also drop the DDP wrapper first, so that the group is
    not destroyed later from the Reducer's destructor."""
    time.sleep(GLOO_SETTLE_SECONDS)
    torch_dist.destroy_process_group()
