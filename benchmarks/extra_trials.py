"""More trials (fresh seeds) of some methods of a finished bench, into the bench's own run folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/extra_trials.py --protocol converged --dataset fashion-mnist \
        --out benchmarks/fashion-mnist-converged --methods random,cod,margin,entropy,cod+semi --trials 3,4,5

Why (issue 24): verdicts that rest on 3 trials are within reach of noise, and the default flavor was chosen on
trials 0-2; trials 3-5 are seeds nothing was chosen on. `todal bench` runs every method of its plan for trials
0..N-1; this runs only the named (method, trial) pairs, exactly as the bench would (`runner.make_loop`: the
trial is the seed, the pool the trial's seeded subset), under the bench's locks, so several processes can share
the work and `todal bench` later reuses every finished run.

`--keep-checkpoints` keeps every cycle's model (not committed: .gitignore), so analyses that need the models of
every cycle (the stopping criteria of issue 23) can read them afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from todal.bench.runner import RunLock, is_done, make_loop, parse_method
from todal.bench.suite import load_for


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True, help="the bench's --out folder")
    ap.add_argument("--methods", required=True, help="comma-separated bench methods, e.g. random,cod,cod+semi")
    ap.add_argument("--trials", required=True, help="comma-separated trials (seeds), e.g. 3,4,5")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="the bench's protocol overrides (the same as the bench was run with)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every cycle's checkpoint")
    args = ap.parse_args(argv)
    p, train, test = load_for(args.protocol, args.dataset, args.overrides)
    methods = [parse_method(m) for m in args.methods.split(",") if m.strip()]
    trials = [int(t) for t in args.trials.split(",") if t.strip()]
    out = Path(args.out)
    todo = [(t, m) for t in trials for m in methods]  # trial-major: a partial set already pairs every method
    for wait in (False, True):
        held = []
        for t, m in todo:
            loop = make_loop(p, m, t, train, test, out)
            if args.keep_checkpoints:
                loop.keep_checkpoints = True
            if is_done(loop.workdir):
                continue
            lock = RunLock(out, f"{m.slug}-trial{t}")
            if not lock.acquire(wait):
                lock.release()
                held.append((t, m))
                continue
            try:
                print(f"== {m.slug}-trial{t}", flush=True)
                loop.run()
            finally:
                lock.release()
        todo = held
    return 0


if __name__ == "__main__":
    sys.exit(main())
