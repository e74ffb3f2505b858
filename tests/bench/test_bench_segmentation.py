"""The segmentation bench: protocol selection by the dataset's task, Table 2's per-class IoU by hand, and a
smoke bench on tiny fashion-mnist-scenes end to end."""

import argparse
import json

import numpy as np
import pytest
import torch

from todal.bench import cli, protocols
from todal.bench.analysis import class_iou_with_and_without, paired, run_metric
from todal.bench.protocols import check_device, differences, protocol, train_input_shape
from todal.bench.runner import Method, make_loop
from todal.bench.suite import load_for
from todal.data import registry
from todal.data.cityscapes import CityscapesDataset
from todal.data.scenes import ITEM, FashionMNISTScenes
from todal.errors import TodalError


def fake_items(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for Fashion-MNIST items: one bright square per item, its class i % 10 (no download)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (n, ITEM, ITEM), dtype=np.uint8)
    x[:, 6:22, 6:22] = (60 + 4 * (np.arange(n) % 40))[:, None, None]
    return x, np.arange(n) % 10


def fake_reader(root=None, *, size: int = 64, test_size: int = 16, seed: int = 0, **options):
    x, y = fake_items()
    tr = FashionMNISTScenes(x, y, size=size, seed=seed, split="train", **options)
    te = FashionMNISTScenes(x, y, size=test_size, seed=seed, split="test", mean=tr.mean, std=tr.std, **options)
    return tr, te


@pytest.fixture
def tiny_scenes(monkeypatch):
    """`fashion-mnist-scenes` composed from fake items, any number of scenes."""
    monkeypatch.setitem(registry.REGISTRY._items, "fashion-mnist-scenes", fake_reader)


# --- protocols ------------------------------------------------------------------------------------
def test_segmentation_paper_protocol_is_the_cityscapes_row_of_table_5():
    p = protocol("paper", task="segmentation")
    assert (p.task, p.model, p.train.epochs, p.train.batch_size, p.train.lr, p.train.optimizer, p.train.weight_decay, p.train.lr_drop_at) == \
        ("segmentation", "drn_d_22", 40, 4, 5e-4, "adam", 0.0, 1.0)
    assert (p.initial, p.budget, p.cycles, p.trials, p.ema_decay, p.for_dataset("cityscapes").lam, p.requires_gpu) == \
        (0.1, 0.05, 7, 3, 0.999, 0.05, True)
    assert p.strategy_options == {"qbc": {"scope": "all"}}
    assert set(p.strategies) | {"emaod"} >= {"random", "entropy", "cod", "emaod", "coreset", "mc_dropout", "qbc",
                                             "vaal", "sraal"} and p.fig9
    assert differences(p) == []


def test_segmentation_cpu_protocol_is_the_scenes_preset_and_lists_its_differences():
    p = protocol("cpu", task="segmentation")
    assert (p.model, p.model_options, p.train.epochs, p.train.batch_size, p.train.lr, p.train.optimizer, p.eval_batch_size) == \
        ("seg_cnn", {"width": 0.5}, 10, 32, 1e-3, "adam", 256)
    assert p.dataset_options == {"size": 1000, "test_size": 500} and not p.requires_gpu
    assert p.strategy_options == {"qbc": {"scope": "all"}, "mc_dropout": {"passes": 10}}
    assert (p.initial, p.budget, p.cycles) == (0.1, 0.05, 7)  # the paper's fractions: 10% .. 40%
    diffs = {d["key"]: (d["value"], d["paper"]) for d in differences(p)}
    assert diffs["model"] == ("seg_cnn", "drn_d_22") and diffs["epochs"] == (10, 40)
    assert diffs["lr"] == (1e-3, 5e-4) and diffs["batch_size"] == (32, 4)
    assert "initial" not in diffs and "optimizer" not in diffs and "strategy_options" in diffs


def test_the_dataset_picks_the_protocol_family(tiny_scenes, tmp_path):
    p, train, test = load_for("cpu", "fashion-mnist-scenes", ['dataset_options={"size": 30, "test_size": 10}'])
    assert p.task == "segmentation" and p.model == "seg_cnn" and (len(train), len(test)) == (30, 10)
    p, train, _ = load_for("smoke", "digits")
    assert p.task == "classification" and p.model == "small_cnn" and getattr(train, "task", None) is None
    p, train, test = load_for("smoke", "fashion-mnist-scenes", ["augment=false"])
    assert len(train) == 200 and train.augment is None  # the smoke sizes; no paired crop + flip
    loop = make_loop(p, Method("mc_dropout"), 0, train, test, tmp_path)  # the protocol's options for it
    assert loop.config.task == "segmentation" and loop.config.strategy_options == {"passes": 10}
    assert loop.config.eval_batch_size == 64 and loop.config.train["optimizer"] == "adam"
    with pytest.raises(TodalError, match="is for classification but 'fashion-mnist-scenes' is a segmentation"):
        load_for(protocol("smoke"), "fashion-mnist-scenes")
    with pytest.raises(TodalError, match="does not take the options"):
        load_for("cpu", "digits", ['dataset_options={"size": 30}'])
    with pytest.raises(TodalError, match="'task' parameter of bench protocol"):
        protocol("cpu", ["task=segmentation"])


def test_the_paper_segmentation_protocol_refuses_a_cpu(monkeypatch):
    seen = {}

    def fake_step(p, channels, size, classes, device, repeats=2):
        seen.update(size=size, channels=channels, classes=classes)
        return 2.0

    monkeypatch.setattr(protocols, "measure_step_time", fake_step)
    paths = [f"/nowhere/{i}.png" for i in range(2975)]
    train = CityscapesDataset(paths, paths)  # 688x688 crops: the step is measured on the crop, nothing decoded
    assert train_input_shape(train) == (3, (688, 688))
    p = protocol("paper", task="segmentation")
    with pytest.raises(TodalError) as e:
        check_device(p, torch.device("cpu"), train, runs=33, semi_runs=3)
    msg = str(e.value)
    assert seen == {"size": (688, 688), "channels": 3, "classes": 19}
    assert "needs a GPU" in msg and "drn_d_22 at batch 4 takes 2.000 s" in msg
    assert f"about {2.0 * protocols.planned_steps(p, 2975) * 36 / 3600:,.0f} hours" in msg
    assert "--protocol cpu --dataset fashion-mnist-scenes" in msg


def test_segmentation_step_time_uses_pixel_labels_and_adam():
    p = protocol("smoke", ["batch_size=2"], task="segmentation")
    assert 0 < protocols.measure_step_time(p, 1, (16, 24), 11, repeats=1) < 5


# --- Table 2 by hand --------------------------------------------------------------------------------
def _rec(miou, iou, fraction=0.4, proportion=(0.5, 0.3, 0.2)):
    return {"labeled_fraction": fraction, "miou": miou, "accuracy": 0.9, "per_class_iou": list(iou),
            "class_proportion": list(proportion)}


def test_per_class_iou_with_and_without_the_tod_loss_by_hand():
    early = _rec(0.1, [0.1, 0.1, 0.1], fraction=0.1)
    without = {0: [early, _rec(0.50, [0.8, 0.4, None])], 1: [early, _rec(0.60, [0.9, 0.2, 0.7])],
               2: [early, _rec(0.99, [0.99, 0.99, 0.99])]}  # trial 2 has no T + U run: not paired
    with_ = {0: [early, _rec(0.55, [0.7, 0.6, None])], 1: [early, _rec(0.70, [0.9, 0.4, None])]}
    t = class_iou_with_and_without(without, with_)
    assert t["trials"] == [0, 1] and t["cycle"] == 1 and t["labeled_fraction"] == 0.4 and t["classes"] == 3
    assert t["proportion"] == pytest.approx([0.5, 0.3, 0.2])
    # class 0: T (0.8 + 0.9) / 2 = 0.85, T+U (0.7 + 0.9) / 2 = 0.8; class 1: 0.3 and 0.5;
    # class 2: T 0.7 (trial 1 only), T+U absent in both trials
    assert t["without"] == pytest.approx([0.85, 0.3, 0.7])
    assert t["with"][:2] == pytest.approx([0.8, 0.5]) and t["with"][2] is None
    assert t["diff"][:2] == pytest.approx([-0.05, 0.2]) and t["diff"][2] is None
    assert (t["better"], t["compared"]) == (1, 2)
    # the rarer compared class is class 1 (30% of the pixels): +0.2; class 0 (50%): -0.05
    assert (t["minority"], t["gain_minority"], t["gain_majority"]) == (1, pytest.approx(0.2), pytest.approx(-0.05))
    assert t["miou_without"] == pytest.approx(0.55) and t["miou_with"] == pytest.approx(0.625)
    assert class_iou_with_and_without(without, {}) == {"trials": [], "classes": 0}


def test_paired_comparisons_read_the_miou():
    runs = {"a": {0: [_rec(0.2, [], 0.1), _rec(0.6, [], 0.3)]}, "b": {0: [_rec(0.2, [], 0.1), _rec(0.4, [], 0.3)]}}
    assert run_metric(runs["a"][0], "final", "miou") == 0.6
    assert run_metric(runs["a"][0], "aubc", "miou") == pytest.approx(0.4)
    c = paired(runs, "a", "b", "aubc", "miou")
    assert c["key"] == "miou" and c["diffs"] == pytest.approx([0.1])


# --- the smoke bench end to end ------------------------------------------------------------------------
def _bench(argv):
    ap = argparse.ArgumentParser(prog="todal")
    cli.add_parser(ap.add_subparsers(dest="command"))
    cli.run(ap.parse_args(argv), argv)


def test_smoke_segmentation_bench_end_to_end(tmp_path, tiny_scenes, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--protocol", "smoke", "--dataset", "fashion-mnist-scenes", "--out", str(out),
            "--strategies", "random,entropy,cod", "--trials", "2", "--quiet",
            "--set", 'dataset_options={"size": 40, "test_size": 12}', "--set", "epochs=1", "--set", "batch_size=8",
            "--set", "initial=8", "--set", "budget=4", "--set", "cycles=2", "--set", "fig9=false",
            "--set", "analysis_pool=16", "--set", 'model_options={"width": 0.25}']
    _bench(argv)
    report = (out / "report.md").read_text()
    for section in ("## Protocol", "## Fig. 8: mIoU vs % labeled", "mIoU % (test set)", "AUBC of mIoU (%)",
                    "## Table 1", "final mIoU", "## Table 2: per-class IoU with and without the TOD loss",
                    "`cod` ('T', task loss only) against `cod+semi`", "`random` ('T', task loss only)",
                    "## Who beats whom", "## Fig. 3", "## Fig. 6", "## Table 3", "Skipped for segmentation",
                    "stands in for Cityscapes", "| model | seg_cnn | drn_d_22 |"):
        assert section in report, section
    # Table 2: rows named by class, the mIoU row, the minority-vs-majority line
    assert "| 0 background |" in report and "| mIoU |" in report and "rarest of them" in report
    assert (out / "fig8_miou.png").stat().st_size > 1000
    r = json.loads((out / "results.json").read_text())
    assert r["task"] == "segmentation" and r["metric"] == "miou" and r["protocol"]["task"] == "segmentation"
    assert r["methods"] == ["random", "entropy", "cod", "random+semi", "cod+semi"]
    assert all(s["metric"] == "miou" for s in r["summaries"].values())
    assert {c["key"] for c in r["paired"]} == {"miou"} and all(c["n"] == 2 for c in r["paired"])
    for base in ("cod", "random"):
        t = r["class_iou"][base]
        assert t["trials"] == [0, 1] and t["classes"] == 11 and sum(t["proportion"]) == pytest.approx(1, abs=1e-4)
        # the table's T column is the mean over trials of the runs' own last-cycle per-class IoU
        last = [r["runs"][base][str(k)][-1]["per_class_iou"][0] for k in (0, 1)]
        assert t["without"][0] == pytest.approx(sum(last) / 2)
    le = r["loss_estimation"]
    assert le["run"] == "cod+semi" and all(c["n"] <= 16 for c in le["mean"])
    assert set(le["mean"][0]["spearman"]) == {"cod", "emaod", "entropy"}
    assert r["per_class"] == {}
    config = json.loads((out / "runs" / "cod+semi-trial0" / "config.json").read_text())
    assert config["task"] == "segmentation" and config["train"]["optimizer"] == "adam"
    assert config["eval_batch_size"] == 64 and config["dataset"]["train_size"] == 40
    _bench(argv)  # the same command again trains nothing
    assert json.loads((out / "results.json").read_text())["environment"]["runs_ran"] == []
    assert "10 reused" in capsys.readouterr().out
