"""Data-parallel training on torch.distributed: the process group, each rank's device, data shard and random
streams, and clear errors when a peer fails.

`hypersan train` runs on one process unless it is started by `torchrun` (which sets WORLD_SIZE, RANK and
LOCAL_RANK) with more than one process, or inside a process group that the caller initialized. Then
`train` wraps the model in DistributedDataParallel: gloo on CPU, NCCL on CUDA. Each rank trains on its
DistributedSampler shard of the training images, with its own seeded random stream for augmentation and
subtasks; rank 0 alone logs, evaluates and writes checkpoints. See docs/SCALING.md.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..config import ConfigError

_FAILURE_KEY = "hypersan/failure"  # a failing rank leaves its error here, for rank 0's message


class DistributedError(RuntimeError):
    """A process of a distributed run failed or stopped answering, so this one stopped too."""


def env_world_size() -> int:
    """The world size torchrun (or the caller) announced in $WORLD_SIZE; 1 when not set."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"$WORLD_SIZE = {raw!r} is not a number of processes; unset it, or start the run with "
                          "torchrun, which sets it") from None
    if n < 1:
        raise ConfigError(f"$WORLD_SIZE = {n}; it must be at least 1")
    return n


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip().isdigit():
        raise ConfigError(f"${name} = {raw!r}: a distributed run needs RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and "
                          "MASTER_PORT; start it with `torchrun --nproc_per_node=N -m hypersan train ...`, which "
                          "sets them all")
    return int(raw)


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one process: `cpu`, or the GPU `cuda:LOCAL_RANK` for `auto` / `cuda` when CUDA is present."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"train.device = {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    if name != "cuda":
        raise ConfigError(f"train.device = {name!r} names one GPU, but a distributed run gives each process its own "
                          "(cuda:LOCAL_RANK); use device 'cuda' or 'auto', and choose GPUs with CUDA_VISIBLE_DEVICES")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process with LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} are "
                          "visible; start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


@dataclass
class Context:
    """One process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this module initialized the process group, and destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of floats over all ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (BN running statistics), so all ranks hold the same model."""
        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def report_failure(self, error: BaseException) -> None:
        """Leave this rank's error in the rendezvous store, where rank 0 reads it for its own message."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(datetime.timedelta(seconds=2))
            store.set(_FAILURE_KEY, f"rank {self.rank} of {self.world_size} failed: {type(error).__name__}: {error}")
        except Exception:  # noqa: BLE001 - the store may be gone with the failing peer; the error is reported anyway
            pass

    def peer_failure(self, error: BaseException) -> DistributedError:
        """A clear error for a collective that failed because another rank died or stopped answering."""
        detail = ""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(datetime.timedelta(seconds=2))
            detail = store.get(_FAILURE_KEY).decode()
        except Exception:  # noqa: BLE001 - no message left (killed, or hung): say what this rank saw
            pass
        seen = (str(error).strip().splitlines() or [type(error).__name__])[0]
        seen = re.sub(r"^\[[^\]]*\]\s*", "", seen).split(" This is typically")[0][:300]  # gloo's source location
        return DistributedError(
            f"rank {self.rank}: training stopped: {detail or 'another process of the run failed or stopped answering'}"
            f" (rank {self.rank} saw: {seen}). The last complete checkpoint stays in place; fix the cause and "
            "continue it with the same torchrun command plus --resume")

    def close(self, synchronize: bool = False) -> None:
        """Destroy the group this context made. synchronize (after a run that ended well on every rank): meet the
        other ranks first, so that no rank tears its connections down while another still uses them."""
        if self.owns_group and dist.is_initialized():
            if synchronize:
                try:
                    dist.barrier()
                except Exception:  # noqa: BLE001 - a peer already gone: destroy this rank's side anyway
                    pass
            dist.destroy_process_group()


def setup(device_name: str, timeout_s: float) -> Context | None:
    """The process group of this run, or None for a run on one process.

    Joins the group the caller initialized, or initializes one from torchrun's environment when $WORLD_SIZE > 1:
    gloo on CPU, NCCL on CUDA, with `timeout_s` on every collective so that a process that stops answering
    fails the run instead of hanging it."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if world == 1:
            return None
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Context(rank, world, local, rank_device(device_name, local), owns_group=False)
    world = env_world_size()
    if world == 1:
        return None
    if not dist.is_available():
        raise ConfigError(f"$WORLD_SIZE = {world} but this torch build has no torch.distributed; run on one process")
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    device = rank_device(device_name, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    if dist.get_world_size() != world or dist.get_rank() != rank:  # pragma: no cover - torchrun sets both
        raise ConfigError(f"process group of {dist.get_world_size()} (rank {dist.get_rank()}) does not match "
                          f"$WORLD_SIZE = {world}, $RANK = {rank}")
    return Context(rank, world, local, device, owns_group=True)


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception raised by a collective means another rank failed, hung or left."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(w in text for w in (
        "connection closed", "connection reset", "broken pipe", "timed out", "timeout", "gloo", "nccl",
        "peer", "socket"))


def stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 64-bit seed for one random stream of one epoch: `shared` (drawn alike on every rank) or `rank{r}`."""
    digest = hashlib.blake2b(f"hypersan:{seed}:{epoch}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # below 2**63: a valid torch seed


def shard(n: int, world_size: int, rank: int, seed: int, epoch: int) -> list[int]:
    """Rank `rank`'s indices of n training images in `epoch`: torch's DistributedSampler (shuffled with seed +
    epoch, padded by repeating a few images so every rank gets ceil(n / world_size))."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)
