"""Data-parallel runs through torch.distributed: `torchrun --nproc-per-node N -m todal run ...`.

One process per device (gloo on CPU, nccl on GPU). Every rank runs the same loop on the same seeds, so
every rank holds the same pool, the same order of batches and the same selections:

- training (`fit`): each rank takes its slice of every labeled and unlabeled batch of the shared seeded
  order (every rank reads and augments the whole batch, so the random augmentation is a one-process run's,
  and keeps its slice: reading is repeated on each rank, the forward and backward passes are split);
  DistributedDataParallel averages the gradients, so the parameters, and the EMA teacher that
  follows them, stay identical on every rank. BatchNorm uses each rank's slice (`TrainConfig.sync_bn`:
  statistics over the whole batch).
- scoring (`ScoreStrategy`): each rank scores its slice of the candidates; the scores are gathered and
  every rank takes the same top-k. Strategies that need all features at once (coreset, BADGE, the
  GCNs, VAAL and the other trained selectors) run on rank 0 alone, which then sends its picks: their
  memory is then one process's, as in a one-process run.
- files: rank 0 alone writes (every `todal.atomic` write is a no-op on the others); the loop waits for
  it at the end of every stage, so a crash of any rank resumes like a one-process run.
- labeling projects (`torchrun -m todal step PROJECT`): rank 0 holds the project's lock, decides the step
  and alone writes the label database; every rank trains and scores its slices as above.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR in the environment); no-op
    otherwise. gloo on CPU, nccl when CUDA is present (each rank on its LOCAL_RANK's device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return active()


def device_for(default: torch.device) -> torch.device:
    """A CUDA rank's own device (cuda:LOCAL_RANK); anything else unchanged."""
    if active() and default.type == "cuda" and default.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank())))
    return default


def barrier() -> None:
    if active():
        dist.barrier()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a batch or a candidate list (every rank holds the same `indices`)."""
    return indices[rank()::world_size()] if active() else indices


def unshard(local: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of `shard`: every rank's slice gathered back into the order of the `n` original items."""
    if not active():
        return local
    size = world_size()
    width = -(-n // size)
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=backend_device)
    padded[: len(local)] = local.to(backend_device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=backend_device)
    for r, part in enumerate(parts):
        count = len(range(r, n, size))
        out[r::size] = part[:count]
    return out.to(local.device)


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """`fn()` run on rank 0 alone, its result on every rank. Any exception it raises is raised on every rank as
    one `TodalError` with the same one-line message (a `TodalError`'s own; else the exception's type and first
    line), so all ranks stop at once instead of waiting on the next collective until it times out."""
    from .errors import TodalError

    if not active():
        return fn()
    box, cause = None, None
    if is_main():
        try:
            box = ("ok", fn())
        except TodalError as e:
            box, cause = ("error", str(e)), e
        except Exception as e:  # noqa: BLE001 - whatever rank 0 hit, every rank must hear of it
            first = str(e).splitlines()[0] if str(e) else ""
            box, cause = ("error", f"rank 0 failed: {type(e).__name__}: {first}"), e
    kind, value = broadcast(box)
    if kind == "error":
        raise TodalError(value) from cause
    return value


def check_shared(folder) -> None:
    """Refuse, on every rank, a run directory that some rank does not see as rank 0 does (a disk local to each
    machine): rank 0 writes a random token there and every rank reads it back."""
    if not active():
        return
    import secrets
    from pathlib import Path

    from .errors import TodalError

    folder = Path(folder)
    token, shown = broadcast((secrets.token_hex(8), str(folder)) if is_main() else None)
    marker = folder / f".todal-shared-{token}"
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    barrier()
    try:
        seen = marker.read_text() == token
    except OSError:
        seen = False
    views = [None] * world_size()
    dist.all_gather_object(views, seen)
    barrier()
    if is_main():
        marker.unlink(missing_ok=True)
    blind = [r for r, ok in enumerate(views) if not ok]
    if blind:
        raise TodalError(f"The run directory {shown} is not on a filesystem every rank sees (rank "
                         f"{', '.join(map(str, blind))} cannot read what rank 0 wrote there); put it on a shared "
                         "filesystem (e.g. NFS) that every machine mounts at the same path, or run in one process.")


def mean(value: float) -> float:
    """The mean of a number over the ranks."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def average_gradients(params) -> None:
    """All-reduce and average the gradients of parameters DDP does not manage (an objective's own module)."""
    if not active():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()
