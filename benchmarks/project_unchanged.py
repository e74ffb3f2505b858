"""Does a labeling project queue the same samples after a refactor? The same project stepped at two revisions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/project_unchanged.py BEFORE_REV [AFTER_REV]

Why (issue 20): `Project.step` stopped training and selecting by itself and now drives the engine
(todal/engine.py) that `ActiveLoop` drives; a person's project must not notice.

What: 600 Fashion-MNIST test images written as PNGs (the same files for both revisions), a project made with
`todal init` at each revision (a git worktree of it; AFTER_REV defaults to the working tree), then the same
simulated person answers every queued image with its true class and the project is stepped four times: cod,
cod with the TOD loss, entropy, coreset. Every queue (sample, rank, score, the model's guesses) and every
step's metrics (timings excluded) are compared.

Writes benchmarks/project-unchanged/{results.json, README.md}.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "project-unchanged"
STEPS = [("cod", False), ("cod", True), ("entropy", False), ("coreset", False)]
CLASSES = "tshirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,boot"

# Runs inside the revision under test (PYTHONPATH=<its src>): only API both revisions share.
SESSION = r"""
import json, sys
from pathlib import Path
from todal.project.core import Project

images, root, truth_file, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
truth = json.loads(truth_file.read_text())
project, _ = Project.init(root, images, sys.argv[5].split(","), seed=0, seed_batch=100)
out = []
for strategy, semi in steps:
    items = project.store.queued()
    project.store.add_labels([{"sample": it.sample, "class": truth[it.path], "annotator": "sim"} for it in items],
                             source="test")
    m = project.step(budget=50, strategy=strategy, semi=semi)
    queue = [(it.sample, it.rank, it.score, it.guesses) for it in project.store.queued()]
    out.append({"strategy": strategy, "semi": semi, "queue": queue,
                "metrics": {k: v for k, v in m.items() if not k.endswith("time_s")}})
print(json.dumps(out))
"""


def write_images(folder: Path) -> dict[str, int]:
    from PIL import Image

    src = Path("/usr/share/datasets/fashion-mnist")
    with gzip.open(src / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    truth = {}
    for i in range(600):
        rel = f"{i % 7}/img{i:04d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / rel)
        truth[rel] = int(y[i])
    return truth


def rev(name: str) -> str:
    return subprocess.run(["git", "rev-parse", name], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def session(src: Path, images: Path, project: Path, truth: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SESSION, str(images), str(project), str(truth), json.dumps(STEPS),
                           CLASSES], env=env, cwd=src, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> dict:
    before_rev = rev(argv[0])
    after_rev = rev(argv[1]) if len(argv) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = write_images(tmp / "images")
        (tmp / "truth.json").write_text(json.dumps(truth))
        trees = {}
        for key, r in (("before", before_rev), ("after", after_rev)):
            trees[key] = ROOT
            if r is not None:
                subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tmp / key), r], cwd=ROOT, check=True)
                trees[key] = tmp / key
        try:
            a = session(trees["before"], tmp / "images", tmp / "p-before", tmp / "truth.json")
            b = session(trees["after"], tmp / "images", tmp / "p-after", tmp / "truth.json")
        finally:
            for key in ("before", "after"):
                if trees[key] != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(trees[key])], cwd=ROOT, check=False)
    rows = []
    for s, t in zip(a, b):
        rows.append({"step": f"{s['strategy']}{' + TOD loss' if s['semi'] else ''}",
                     "same_queue": s["queue"] == t["queue"], "same_metrics": s["metrics"] == t["metrics"],
                     "queued": len(s["queue"]), "holdout_accuracy": s["metrics"].get("val_accuracy")})
    same = all(r["same_queue"] and r["same_metrics"] for r in rows)
    result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/project_unchanged.py " + " ".join(argv),
              "before": before_rev, "after": after_rev or f"working tree at {rev('HEAD')}", "steps": rows,
              "identical": same}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = "\n".join(f"| {i + 1} | {r['step']} | {r['queued']} | {r['same_queue']} | {r['same_metrics']} |"
                      for i, r in enumerate(rows))
    (OUT / "README.md").write_text(
        "# A labeling project before and after the engine refactor\n\n"
        f"Command: `{result['command']}`.\n\n"
        f"The same 600 Fashion-MNIST PNGs, `todal init` then four steps answered by the same simulated person, at "
        f"`{before_rev}` and at {result['after']}. Each queue (sample, rank, score, guesses) and each step's metrics "
        f"(timings excluded) compared: **{'identical' if same else 'DIFFERENT'}**.\n\n"
        "| step | strategy | queued | same queue | same metrics |\n|---|---|---|---|---|\n" + table + "\n")
    print("identical" if same else "DIFFERENT", json.dumps(rows))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
