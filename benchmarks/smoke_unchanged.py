"""Did a refactor change what the bench measures? `todal bench --protocol smoke` before and after, compared.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smoke_unchanged.py BEFORE_REV [AFTER_REV]

Why (issue 12): the library's API was reworked (public loop accessors, consistency losses as objectives,
up-front checks, data-parallel hooks, precision options); behaviour of the existing benchmarks must not move.

What: the smoke bench (digits, every code path of the bench at tiny size, 2 trials, 14 runs) at BEFORE_REV
(a git worktree of it) and at AFTER_REV (default: the working tree), each in a fresh output folder; then
every run's per-cycle records are compared, timing fields excluded, plus the loss-estimation analyses.

Writes benchmarks/smoke-unchanged/{results.json, README.md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "smoke-unchanged"
IGNORED = ("train_time_s", "select_time_s", "train_epoch_losses")  # timings; the epoch losses were added later


def bench(src: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "todal.cli", "bench", "--protocol", "smoke", "--dataset", "digits",
                    "--out", str(out), "--quiet"], env=env, check=True, cwd=src, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def rev(name: str) -> str:
    return subprocess.run(["git", "rev-parse", name], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str]) -> dict:
    before_rev = rev(argv[0])
    after_rev = rev(argv[1]) if len(argv) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {}
        for key, r in (("before", before_rev), ("after", after_rev)):
            if r is None:
                trees[key] = ROOT
            else:
                subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tmp / key), r], cwd=ROOT, check=True)
                trees[key] = tmp / key
        try:
            a, b = bench(trees["before"], tmp / "out-before"), bench(trees["after"], tmp / "out-after")
        finally:
            for key in ("before", "after"):
                if trees[key] != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(trees[key])], cwd=ROOT, check=False)
    differing = []
    for method, trials in a["runs"].items():
        for t, recs in trials.items():
            strip = lambda rs: [{k: v for k, v in r.items() if k not in IGNORED} for r in rs]  # noqa: E731
            if strip(recs) != strip(b["runs"].get(method, {}).get(t, [])):
                differing.append(f"{method} trial {t}")
    same_analyses = json.dumps(a.get("loss_estimation"), sort_keys=True) == json.dumps(b.get("loss_estimation"), sort_keys=True)
    result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smoke_unchanged.py " + " ".join(argv),
              "before": before_rev, "after": after_rev or f"working tree at {rev('HEAD')}",
              "runs": sum(len(v) for v in a["runs"].values()), "differing_runs": differing,
              "same_loss_estimation": same_analyses}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    verdict = ("identical" if not differing and same_analyses else
               f"DIFFERENT ({len(differing)} runs: {', '.join(differing)}; analyses the same: {same_analyses})")
    (OUT / "README.md").write_text(
        "# The smoke bench before and after the API rework\n\n"
        f"Command: `{result['command']}`.\n\n"
        f"`todal bench --protocol smoke --dataset digits` at `{before_rev}` and at {result['after']}: "
        f"{result['runs']} runs, every per-cycle record compared (timings excluded) and the loss-estimation "
        f"analyses: **{verdict}**.\n")
    print(verdict)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
