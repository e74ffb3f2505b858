"""A data-parallel ActiveLoop on localhost with gloo, for tests/test_distributed.py (run as a script).

    python tests/ddp_worker.py WORKDIR STRATEGY WORLD [--crash-rank R --crash-cycle C] [--flavor F]
                               [--fail-select] [--local-dirs]

WORLD processes (1: no process group) run the same ActiveLoop on WORKDIR; rank 0 writes the records
to WORKDIR/out.json. With --crash-rank, that rank dies (os._exit) when training of cycle C starts. With
--fail-select, rank 0's selection raises a RuntimeError; with --local-dirs each rank gets its own run
directory (as on machines without a shared filesystem). A rank that stops on a TodalError writes its
message to WORKDIR/error-rank<R>.txt and exits with 2.
"""

import argparse
import datetime
import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from tinydata import blobs, mlp  # noqa: E402

import todal  # noqa: E402
import todal.loop  # noqa: E402
from todal import ActiveLoop  # noqa: E402


def make(workdir: str, strategy: str, flavor: str = "default") -> ActiveLoop:
    return ActiveLoop(mlp, blobs(200, 0), blobs(60, 1), strategy=strategy, semi_supervised=True, initial=20, budget=10,
                      cycles=3, epochs=3, train={"batch_size": 16, "lr": 0.05}, workdir=workdir, seed=0, flavor=flavor)


def worker(rank: int, world: int, port: int, args) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))  # a loaded machine: ranks wait long
    if args.crash_rank == rank:
        real = todal.engine.fit

        def dying(*a, **kw):
            if "cycle 1" in str(kw.get("progress")) or _cycle(args.workdir) == args.crash_cycle:
                os._exit(3)
            return real(*a, **kw)

        todal.engine.fit = dying
    if args.fail_select and rank == 0:
        from todal.strategies.base import Strategy

        def broken(self, ctx, k):
            raise RuntimeError("selection broke on rank 0\nsecond line")

        cls = type(todal.strategies.get(args.strategy))
        cls._select = broken
    workdir = str(Path(args.workdir) / f"rank{rank}") if args.local_dirs else args.workdir
    try:
        records = make(workdir, args.strategy, args.flavor).run()
    except todal.TodalError as e:
        Path(args.workdir, f"error-rank{rank}.txt").write_text(str(e))
        sys.exit(2)
    if rank == 0:
        Path(args.workdir, "out.json").write_text(json.dumps(records))
    if world > 1:
        dist.destroy_process_group()


def _cycle(workdir: str) -> int:
    return json.loads(Path(workdir, "progress.json").read_text())["cycle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("strategy")
    ap.add_argument("world", type=int)
    ap.add_argument("--crash-rank", type=int, default=None)
    ap.add_argument("--crash-cycle", type=int, default=1)
    ap.add_argument("--flavor", default="default")
    ap.add_argument("--fail-select", action="store_true")
    ap.add_argument("--local-dirs", action="store_true")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.world == 1:
        worker(0, 1, 0, args)
    else:
        mp.spawn(worker, args=(args.world, free_port(), args), nprocs=args.world)
