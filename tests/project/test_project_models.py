"""A labeling project on real models: a tiny transformers model saved with save_pretrained (hf:DIR), fine-tuned or
frozen, its input taken from its processor config; models replaced on re-init; the guesses' accuracy in status."""

import json

import numpy as np
import pytest
import torch

import todal.project.core as core
from projkit import CLASSES, answer_queue, write_images
from todal.cli import main
from todal.errors import TodalError
from todal.project.core import Project

transformers = pytest.importorskip("transformers")
TRAIN = {"epochs": 4, "batch_size": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tinydata import save_tiny_hf_resnet

    return save_tiny_hf_resnet(tmp_path_factory.mktemp("hf"), {"height": 16, "width": 16})


def make(tmp_path, n=120, **kw):
    truth = write_images(tmp_path / "images", n)
    kw = {"seed_batch": 45, "train": TRAIN, **kw}
    project, _ = Project.init(tmp_path / "proj", tmp_path / "images", CLASSES, **kw)
    return project, truth


def test_hf_dir_through_init_labels_step_and_export(tmp_path, hf_dir, capsys):
    images = tmp_path / "images"
    truth = write_images(images, 90)
    assert main(["init", str(tmp_path / "proj"), "--images", str(images), "--classes", ",".join(CLASSES),
                 "--model", f"hf:{hf_dir}", "--seed-batch", "45", "--epochs", "3", "--batch-size", "16",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"model hf:{hf_dir}; images at 16x16 RGB, normalized with the model's own mean [0.5, 0.4, 0.3]" in out
    assert "the images are grayscale and are converted to RGB for this 3-channel model" in out
    project = Project(tmp_path / "proj")
    assert (project.meta["size"], project.meta["mode"]) == (16, "RGB")
    data = project.dataset()
    assert data.mean == (0.5, 0.4, 0.3) and data.std == (0.25, 0.2, 0.15)  # the processor's, not the pool's
    assert data.batch(torch.arange(2))[0].shape == (2, 3, 16, 16)
    answer_queue(project, truth)
    assert main(["step", str(project.root), "--budget", "15", "--quiet"]) == 0
    assert len(project.store.queued()) == 15
    assert main(["export", str(project.root), "--format", "csv", str(tmp_path / "q.csv")]) == 0
    assert len((tmp_path / "q.csv").read_text().splitlines()) == 16
    model = project.model()
    assert model.pretrained and model(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_a_frozen_project_embeds_each_image_once_and_rebuilds_for_other_weights(tmp_path, hf_dir, monkeypatch):
    project, truth = make(tmp_path, model=f"hf:{hf_dir}", frozen=True)
    calls = []
    real = core.Project.backbone

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(core.Project, "backbone", counted)
    answer_queue(project, truth)
    m = project.step(budget=15, strategy="cod", semi=True)
    assert "embed_time_s" in m and len(calls) == 1
    embedded = list((project.root / "cache").glob("embed-*.npy"))
    assert len(embedded) == 1
    features = np.load(embedded[0]).copy()
    answer_queue(project, truth)
    project.step(budget=15, strategy="badge")
    assert len(calls) == 1  # reused: the backbone did not run again
    model = project.model()
    x = project.dataset().batch(torch.arange(3))[0]
    from todal.inference import test_transform

    assert model(test_transform(project.dataset())(x)).shape == (3, 3)
    # other weights for the same backbone: another cache, rebuilt once
    other = core.ModelSource(f"hf:{hf_dir}").build(in_channels=3, num_classes=3)
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in other.backbone.state_dict().items()},
               tmp_path / "other.pt")
    project, _ = Project.init(project.root, tmp_path / "images", CLASSES, weights=str(tmp_path / "other.pt"))
    assert project.meta["model_epoch"] == 1
    answer_queue(project, truth)
    project.step(budget=15, strategy="cod")
    rebuilt = list((project.root / "cache").glob("embed-*.npy"))
    assert len(rebuilt) == 1 and rebuilt[0] != embedded[0] and not np.allclose(np.load(rebuilt[0]), features)


def test_reinit_with_another_model_rebuilds_the_cache_at_its_side_and_starts_it_afresh(tmp_path, hf_dir):
    project, truth = make(tmp_path, size=12)
    answer_queue(project, truth)
    project.step(budget=15, strategy="cod")
    assert (project.root / "cache" / "images-12-L.u8").exists()
    project, report = Project.init(project.root, tmp_path / "images", CLASSES, model=f"hf:{hf_dir}")
    assert (project.meta["size"], project.meta["mode"], project.meta["model_epoch"]) == (16, "RGB", 1)
    assert len(project.cache) == 120 and report.unchanged == 120
    answer_queue(project, truth)
    m = project.step(budget=15, strategy="cod")  # trained from the new model's initial weights, not step 1's
    assert m["queued"] == 15 and (project.root / "checkpoints" / "start_2.pt").exists()
    assert project.model().pretrained
    again, _ = Project.init(project.root, tmp_path / "images", CLASSES, model=f"hf:{hf_dir}")
    assert again.meta["model_epoch"] == 1  # the same model again changes nothing


@pytest.mark.parametrize("kw, text", [
    ({"model": "vgg"}, r"Unknown model 'vgg'. Valid: resnet18, small_cnn"),
    ({"model": "json:dumps"}, r"was called as dumps\(num_classes=3, in_channels=1\) and failed"),
    ({"model": "small_cnn", "weights": "missing.pt"}, r"Weights file .*missing.pt does not exist"),
    ({"model": "seg_cnn"}, r"output on a batch of 2 images is \[2, 3, 12, 12\], not \[2, 3\]"),
    ({"model": "small_cnn", "size": 2}, r"'size' parameter of todal init must be an int in \[4, 1024\]"),
])
def test_a_bad_model_is_one_line_before_any_image_is_decoded(tmp_path, monkeypatch, kw, text):
    write_images(tmp_path / "images", 30)

    def never(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(core, "read_files", never)
    with pytest.raises(TodalError, match=text):
        Project.init(tmp_path / "proj", tmp_path / "images", CLASSES, size=kw.pop("size", 12), **kw)
    assert not (tmp_path / "proj" / "project.db").exists()


def test_weights_with_other_keys_are_named_at_init(tmp_path):
    write_images(tmp_path / "images", 30)
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "w.pt")
    with pytest.raises(TodalError, match=r"do not fit the model \(missing .*; unexpected fc.weight\)"):
        Project.init(tmp_path / "proj", tmp_path / "images", CLASSES, size=12, weights=str(tmp_path / "w.pt"))


def test_status_says_how_often_the_top_guess_was_the_label_then_given(tmp_path, capsys):
    project, truth = make(tmp_path, size=12, seed_batch=60, train={"epochs": 12, "batch_size": 16, "lr": 0.05})
    swap = {0: 1, 1: 2, 2: 0}  # the person's classes differ from the files' patterns: the guesses must follow them
    answer_queue(project, truth, relabel=lambda c: swap[c])
    project.step(budget=30, strategy="random")
    queued = project.store.queued()
    expected = sum(it.guesses[0][0] == swap[truth[it.path]] for it in queued)
    answer_queue(project, truth, relabel=lambda c: swap[c])
    row = next(r for r in project.status()["steps"] if r["step"] == 1)
    assert row["guesses_answered"] == 30 and row["guess_accuracy"] == expected / 30
    assert row["guess_accuracy"] > 0.6  # the model learned the person's classes, so its guesses are worth showing
    assert main(["status", str(project.root)]) == 0
    assert f"{100 * expected / 30:.1f}% (n=30)" in capsys.readouterr().out
