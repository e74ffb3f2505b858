"""Data-parallel runs (torch.distributed, gloo on localhost): 2 processes match 1 with the same global batch,
and a run whose rank dies mid-cycle resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "ddp_worker.py"


def run(workdir, strategy, world, *extra, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(WORKER), str(workdir), strategy, str(world), *extra], env=env,
                       capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def records(workdir):
    return json.loads((Path(workdir) / "out.json").read_text())


# cod: sharded scoring; coreset: rank 0 selects and broadcasts; official: the two-head consistency through DDP
@pytest.mark.parametrize("strategy,flavor", [("cod", "default"), ("coreset", "default"), ("cod", "official")])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, strategy, flavor):
    run(tmp_path / "one", strategy, 1, "--flavor", flavor)
    run(tmp_path / "two", strategy, 2, "--flavor", flavor)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["labeled"] for r in two] == [20, 30, 40]
    for a, b in zip(one, two):
        # the same gradients up to float summation order: same selections, losses within 1e-4
        assert a.get("selected") == b.get("selected")
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and abs(a["accuracy"] - b["accuracy"]) < 1e-6
    # rank 0 alone wrote the run directory: one set of files, no temp files left
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_a_rank_dying_mid_cycle_resumes(tmp_path):
    run(tmp_path / "ref", "cod", 2)
    crashed = run(tmp_path / "x", "cod", 2, "--crash-rank", "1", "--crash-cycle", "1", check=False)
    assert crashed.returncode != 0
    assert json.loads((tmp_path / "x" / "progress.json").read_text())["cycle"] == 1
    run(tmp_path / "x", "cod", 2)
    ref, resumed = records(tmp_path / "ref"), records(tmp_path / "x")
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rs]  # noqa: E731
    assert strip(resumed) == strip(ref)



def test_an_error_on_rank_0_stops_every_rank_with_the_same_line(tmp_path):
    """A rank-0-only strategy (coreset) raising something other than a TodalError: every rank stops with the
    same one-line error at once, instead of the others waiting on a collective until it times out."""
    p = run(tmp_path, "coreset", 2, "--fail-select", check=False)
    assert p.returncode != 0
    errors = [(tmp_path / f"error-rank{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1] == "rank 0 failed: RuntimeError: selection broke on rank 0"


def test_a_run_directory_not_every_rank_sees_is_refused_on_every_rank(tmp_path):
    p = run(tmp_path, "random", 2, "--local-dirs", check=False)
    assert p.returncode != 0
    errors = [(tmp_path / f"error-rank{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1] and "is not on a filesystem every rank sees (rank 1 cannot read" in errors[0]
    assert not (tmp_path / "rank0" / "config.json").exists()  # refused before anything was written
