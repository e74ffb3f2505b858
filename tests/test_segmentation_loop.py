"""The active learning loop on segmentation: CLI end to end, resume, dense pool, streaming scoring."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import todal.loop
from tinydata import largest_tensor_while, run_until_killed
from todal import ActiveLoop, Pool
from todal.models import ModelSource
from todal.cli import main
from todal.data import registry
from todal.data.scenes import ITEM, FashionMNISTScenes
from todal.discrepancy import discrepancy, to_space
from todal.errors import TodalError
from todal.flavor import flavor_for
from todal.oracle import FileOracle
from todal.results import compare_table, run_table, summarize
from todal.strategies import Context, get
from todal.strategies.base import LabelMaps
from todal.strategies.uncertainty import entropy_score
from todal.tasks import Segmentation
from todal.train import TrainConfig, fit

TIMING = ("train_time_s", "select_time_s")


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def items(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fake Fashion-MNIST items: a bright blob per item on a dark background (no download)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (n, ITEM, ITEM), dtype=np.uint8)
    x[:, 6:22, 6:22] = (60 + 4 * (np.arange(n) % 40))[:, None, None]
    return x, np.arange(n) % 10


def scenes(size: int = 48, test_size: int = 16):
    x, y = items()
    tr = FashionMNISTScenes(x, y, size=size, split="train")
    te = FashionMNISTScenes(x, y, size=test_size, split="test", mean=tr.mean, std=tr.std)
    return tr, te


@pytest.fixture
def tiny_scenes(monkeypatch):
    """`--dataset fashion-mnist-scenes` reads 48 train and 16 test scenes of fake items."""
    monkeypatch.setitem(registry.REGISTRY._items, "fashion-mnist-scenes", lambda root=None, **kw: scenes())


FAST = ["--dataset", "fashion-mnist-scenes", "--cycles", "2", "--epochs", "1", "--initial", "16", "--budget", "8",
        "--batch-size", "8", "--quiet", "--baseline", "none"]


@pytest.mark.parametrize("strategy", ["random", "entropy", "cod", "emaod"])
def test_cli_runs_segmentation_end_to_end(tmp_path, capsys, tiny_scenes, strategy):
    work = tmp_path / "r"
    assert main(["run", "--task", "segmentation", "--strategy", strategy, "--workdir", str(work), *FAST]) == 0
    out = capsys.readouterr().out
    assert "mIoU %" in out
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["labeled"] for r in records] == [16, 24]
    assert all(0 <= r["miou"] <= 1 and len(r["per_class_iou"]) == 11 for r in records)
    assert len(records[0]["selected"]) == 8
    pool = json.loads((work / "pool.json").read_text())
    assert pool["version"] == 2 and pool["dense"] and all(set(c) == {"indices"} for c in pool["cycles"])
    config = json.loads((work / "config.json").read_text())
    assert config["task"] == "segmentation" and config["model"] == "seg_cnn"
    assert config["train"]["optimizer"] == "adam" and config["eval_batch_size"] == 256  # the preset
    res = json.loads((work / "results.json").read_text())
    assert res["strategies"][strategy]["metric"] == "miou"  # the TOD loss is off by default


def test_cli_task_defaults_to_the_datasets(tmp_path, tiny_scenes):
    assert main(["run", "--strategy", "random", "--no-semi", "--workdir", str(tmp_path / "r"), *FAST]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["task"] == "segmentation"


def make(workdir, strategy="cod", **kw):
    tr, te = scenes()
    return ActiveLoop(ModelSource("seg_cnn", {"width": 0.25}), tr, te, strategy=strategy, semi_supervised=True,
                      initial=16, budget=8, cycles=3, epochs=1, train={"batch_size": 8, "lr": 1e-3, "optimizer": "adam"},
                      eval_batch_size=16, workdir=workdir, seed=0, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return strip(make(tmp_path_factory.mktemp("ref")).run())


@pytest.mark.parametrize("kill_after", [2, 3, 6])
def test_resume_after_a_kill_gives_the_same_run(tmp_path, monkeypatch, uninterrupted, kill_after):
    expected = uninterrupted
    run_until_killed(lambda: make(tmp_path / "run").run(), monkeypatch, kill_after)
    assert strip(make(tmp_path / "run").run()) == expected
    assert [len(r.get("selected", [])) for r in expected] == [8, 8, 0]


def test_file_oracle_is_refused_for_segmentation(tmp_path):
    with pytest.raises(TodalError, match="FileOracle .* cannot take segmentation masks"):
        make(tmp_path, oracle=FileOracle(tmp_path))


def test_eval_batch_size_defaults_to_a_pixel_budget():
    tr, _ = scenes()
    assert todal.loop.default_eval_batch_size(tr, dense=True) == 2**20 // (64 * 64)
    assert todal.loop.default_eval_batch_size(tr, dense=False) == 512
    assert todal.loop.default_task(tr) == "segmentation"


# --- the dense pool ------------------------------------------------------------------------------
def test_dense_pool_round_trip_keeps_no_masks(tmp_path):
    pool = Pool(10, 3, dense=True)
    pool.add([4, 1], torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 0]]]), cycle=0)
    pool.add([7], None, cycle=1)
    pool.save(tmp_path / "pool.json")
    state = json.loads((tmp_path / "pool.json").read_text())
    assert state["version"] == 2 and state["cycles"] == [{"indices": [1, 4]}, {"indices": [7]}]
    back = Pool.load(tmp_path / "pool.json")
    assert back.dense and torch.equal(back.cycle, pool.cycle) and back.labeled.tolist() == [1, 4, 7]


def test_class_pool_file_keeps_version_1():
    pool = Pool(5, 2)
    pool.add([3], [1])
    state = pool.state_dict()
    assert state["version"] == 1 and "dense" not in state and state["cycles"] == [{"indices": [3], "labels": [1]}]
    assert not Pool.from_state_dict(state).dense


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([[[0, 3]]]), "holding 3, outside \\[0, 3\\)"),
    (torch.tensor([[[0, -1]]]), "holding -1"),
    (torch.tensor([0]), "integer label maps"),
    (torch.zeros(2, 2, 2, dtype=torch.long), "1 indices but 2 labels"),
])
def test_dense_pool_refuses_bad_maps(labels, message):
    with pytest.raises(TodalError, match=message):
        Pool(5, 3, dense=True).add([2], labels)


def test_class_pool_refuses_maps_with_a_hint():
    with pytest.raises(TodalError, match="dense pool"):
        Pool(5, 3).add([2], torch.zeros(1, 4, 4, dtype=torch.long))


def test_label_maps_read_the_datasets_masks():
    tr, _ = scenes()
    labeled = torch.tensor([3, 7, 20])
    maps = LabelMaps(tr, labeled)
    assert len(maps) == 3 and maps.dim() == 3 and maps.shape == (3, 64, 64)
    assert torch.equal(maps[torch.tensor([2, 0])], tr.batch(torch.tensor([20, 3]))[1])
    assert torch.equal(maps[1], tr.batch(torch.tensor([7]))[1][0])
    assert maps.long() is maps and maps.to("cpu") is maps


# --- training with the paired transform --------------------------------------------------------
class PairSpy:
    """A dense dataset whose paired transform records what it gets and flips image and mask."""

    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 255, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, 3, (n, 8, 8), generator=g)
        self.num_classes, self.calls = 3, []

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        return self.x[idx], self.y[idx]

    def train_pair_transform(self, x, y, generator=None):
        self.calls.append(y.clone())
        return x.float().flip(-1), y.flip(-1)


def test_fit_uses_the_paired_transform_for_images_and_masks():
    ds = PairSpy()
    model = nn.Conv2d(1, 3, 1)
    seen = []
    task = Segmentation(3)
    real_loss = task.loss
    task.loss = lambda out, y: (seen.append(y.clone()), real_loss(out, y))[1]
    from todal.ema import EMA

    fit(model, task, ds, torch.arange(4), cfg=TrainConfig(epochs=1, batch_size=4, lr=0.01), generator=torch.Generator(),
        unlabeled=torch.arange(4, 12), ema=EMA(model, 0.9), consistency="default")
    labeled_call, unlabeled_call = ds.calls
    assert torch.equal(seen[0], labeled_call.flip(-1))  # the loss saw the transformed mask
    assert sorted(labeled_call.flatten().tolist()) == sorted(ds.y[:4].flatten().tolist())
    assert unlabeled_call.shape == (4, 8, 8) and not unlabeled_call.any()  # image only: a zero stand-in


# --- streaming scoring ---------------------------------------------------------------------------
class DenseData:
    def __init__(self, n, seed=0, size=8):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, size, size, generator=g)
        self.y = torch.randint(0, 3, (n, size, size), generator=g)
        self.num_classes = 3

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        return self.x[idx], self.y[idx]


def seg_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def context(n, *, batch_size=8, cycle=1, seed=0):
    ds = DenseData(n, seed)
    model, prev, ema = seg_net(1), seg_net(2), seg_net(3)
    ctx = Context(model=model, task=Segmentation(3), dataset=ds, labeled=torch.arange(4),
                  unlabeled=torch.arange(4, n), labels=LabelMaps(ds, torch.arange(4)),
                  generator=torch.Generator().manual_seed(0), cycle=cycle, batch_size=batch_size, ema_model=ema,
                  previous=lambda: prev, flavor=flavor_for("paper"))
    return ctx, model, prev, ema


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_streaming_scores_equal_the_whole_pool_answer(batch_size):
    ctx, model, prev, ema = context(24, batch_size=batch_size)
    cand = ctx.unlabeled
    whole = dataclasses.replace(ctx, batch_size=1000)  # one batch: the non-streaming answer
    full = {m: to_space(whole.outputs(m, cand), "probs") for m in (model, prev, ema)}
    task = ctx.task
    assert torch.allclose(get("cod").score(ctx, cand), discrepancy(full[model], full[prev], task=task), atol=1e-5)
    assert torch.allclose(get("emaod").score(ctx, cand), discrepancy(full[model], full[ema], task=task), atol=1e-5)
    assert torch.allclose(get("entropy").score(ctx, cand), entropy_score(full[model]), atol=1e-5)


def test_cod_keeps_no_dense_outputs_between_cycles():
    ctx, *_ = context(24)
    cod = get("cod")
    cod.score(ctx, ctx.unlabeled)
    assert cod.state_dict() == {"cache": {}}


@pytest.mark.parametrize("strategy", ["cod", "emaod", "entropy", "margin", "least_confidence"])
def test_scoring_memory_does_not_grow_with_the_pool(strategy):
    """By construction: the largest tensor built while scoring is the same for a pool 4x larger,
    and far below one `[n, C, H, W]` output of the pool."""
    largest = []
    for n in (40, 160):
        ctx, *_ = context(n, batch_size=8)
        largest.append(largest_tensor_while(lambda: get(strategy).select(ctx, 5)))
    assert largest[0] == largest[1]
    assert largest[1] <= 8 * 4 * 8 * 8  # one batch of the widest activation (8 samples x 4 x 8 x 8)
    assert largest[1] < 156 * 3 * 8 * 8 / 10


# --- tables -------------------------------------------------------------------------------------
def test_tables_show_miou_and_tolerate_absent_classes():
    rec = lambda seed, c, miou, iou: {"cycle": c, "labeled": 10 + 5 * c, "labeled_fraction": 0.1 + 0.05 * c,
                                      "accuracy": 0.8, "miou": miou, "loss": 1.0, "per_class_iou": iou}
    runs = {0: [rec(0, 0, 0.4, [0.5, None, 0.3]), rec(0, 1, 0.5, [0.6, None, None])],
            1: [rec(1, 0, 0.6, [0.7, 0.2, None]), rec(1, 1, 0.7, [0.8, None, None])]}
    s = summarize(runs)
    assert s["metric"] == "miou" and s["final_miou_mean"] == pytest.approx(0.6)
    assert s["cycles"][0]["per_class_iou_mean"] == pytest.approx([0.6, 0.2, 0.3])
    assert s["cycles"][1]["per_class_iou_mean"][1:] == [None, None]
    assert s["aubc"] == pytest.approx(0.55)
    assert "mIoU %" in run_table(runs[0]) and "50.00" in run_table(runs[0])
    table = compare_table({"cod": s})
    assert "mIoU %" in table and "60.00 ± 14.14" in table


def test_the_default_flavor_takes_the_highest_cod_first_for_segmentation(tmp_path):
    """The default's first COD pick is per task: lowest for classification, highest for segmentation
    (todal/flavor.py says why); a dict over the default keeps the task's choice unless it sets it."""
    from todal.flavor import flavor_for

    assert flavor_for("default", task="segmentation").first_cycle_lowest is False
    assert flavor_for("default").first_cycle_lowest is True
    assert make(tmp_path / "a").flavor.first_cycle_lowest is False
    assert make(tmp_path / "b", flavor={"lam": 0.1}).flavor.first_cycle_lowest is False
    assert make(tmp_path / "c", flavor={"first_cycle_lowest": True}).flavor.first_cycle_lowest is True
    assert make(tmp_path / "d", flavor="paper").flavor.first_cycle_lowest is False
