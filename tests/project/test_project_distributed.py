"""Labeling projects under torchrun: `todal step` trains data-parallel, the other commands refuse."""

import os
import subprocess
import sys

from ddp_worker import free_port
from projkit import CLASSES, answer_queue, write_images
from todal.project.core import Project



def test_a_labeling_step_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m todal step PROJECT`: both ranks train on their slices, rank 0 alone writes
    the label database; the queue is the one a one-process step makes on an identical project."""
    projects = {}
    for name in ("one", "two"):
        truth = write_images(tmp_path / name / "images", 90)
        project, _ = Project.init(tmp_path / name / "proj", tmp_path / name / "images", CLASSES, size=12, seed_batch=45,
                                  model_options={"norm": "group"},  # no batch statistics: the same on 1 or 2 ranks
                                  train={"epochs": 4, "batch_size": 16, "lr": 0.05})
        answer_queue(project, truth, relabel={0: 2, 1: 0, 2: 1}.get)  # the person's classes, not the files' order
        projects[name] = project
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    step = ["-m", "todal", "step", "--budget", "12", "--strategy", "cod", "--semi", "--quiet"]
    one = subprocess.run([sys.executable, *step[:3], str(projects["one"].root), *step[3:]], env=env,
                         capture_output=True, text=True, timeout=600)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(free_port()), *step[:3], str(projects["two"].root), *step[3:]], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("step 1: trained on") == 1  # rank 0 alone prints
    a, b = projects["one"].store, projects["two"].store
    assert [(i.sample, i.rank) for i in b.queued()] == [(i.sample, i.rank) for i in a.queued()] and len(a.queued()) == 12
    for x, y in zip(a.queued(), b.queued()):
        assert (x.score is None and y.score is None) or abs(x.score - y.score) < 1e-4  # None: validation slice
    ma, mb = a.steps()[1]["metrics"], b.steps()[1]["metrics"]
    assert abs(ma["train_loss"] - mb["train_loss"]) < 1e-4 and ma["val_accuracy"] == mb["val_accuracy"]
    assert [s["state"] for s in b.steps()] == ["done", "done"] and b.integrity() == "ok"


def test_labeling_commands_other_than_step_refuse_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(free_port()), "-m", "todal", "init", str(tmp_path / "p"), "--images", str(tmp_path),
                        "--classes", "a,b"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "todal init runs in one process; run it without torchrun" in p.stderr
