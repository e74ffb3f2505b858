"""Per-dataset defaults for what the command line leaves unset.

The paper's setting (appendix B) is what `TrainConfig` defaults to: ResNet-18, 200 epochs, SGD
0.1. That takes days on a CPU, so small datasets get a small CNN and fewer epochs; every value
can be overridden.

A preset holds `model`, `model_options`, `train` (the `TrainConfig` fields that differ from its
defaults: the one home of training settings) and optionally `eval_batch_size` (evaluation and
scoring batch; absent: `ActiveLoop`'s default).
"""

from __future__ import annotations

import copy

PAPER = {"model": "resnet18", "model_options": {}, "train": {}}

# A labeling project's steps (`todal init`; `--epochs` and the other training flags override them).
PROJECT_TRAIN = {"epochs": 15, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "lr_drop_at": 0.8}

PRESETS = {
    # The embedded demo: sklearn digits (1,257 training images of 8x8), minutes on 2 cores.
    "digits": {"model": "small_cnn", "model_options": {}, "train": {"epochs": 20, "batch_size": 32, "lr": 0.05}},
    # Fashion-MNIST on a CPU: the protocol of benchmarks/fashion-mnist-core.
    "fashion-mnist": {"model": "small_cnn", "model_options": {"width": 0.5},
                      "train": {"epochs": 12, "batch_size": 64, "lr": 0.05}},
    # Segmentation on a CPU: 64x64 Fashion-MNIST scenes, the small encoder-decoder at half width
    # (~30k parameters), Adam as for Cityscapes, no weight decay or lr drop. Pass --initial and
    # --budget as counts (e.g. 600 and 300) for runs of minutes: the default 10% is 6,000 scenes.
    "fashion-mnist-scenes": {"model": "seg_cnn", "model_options": {"width": 0.5},
                             "train": {"epochs": 10, "batch_size": 32, "lr": 1e-3, "optimizer": "adam",
                                       "weight_decay": 0.0, "lr_drop_at": 1.0},
                             "eval_batch_size": 256},
    # The paper's segmentation setting (appendix B, Table 5): DRN-D-22 on 688x688 crops, Adam
    # lr 5e-4, no weight decay ("-"), batch 4, 40 epochs a cycle, no lr drop stated. Evaluation and
    # scoring run on whole 2048x1024 images, two at a time.
    "cityscapes": {"model": "drn_d_22", "model_options": {},
                   "train": {"epochs": 40, "batch_size": 4, "lr": 5e-4, "optimizer": "adam", "weight_decay": 0.0,
                             "lr_drop_at": 1.0},
                   "eval_batch_size": 2},
}


def defaults_for(dataset: str, train_set=None) -> dict:
    """Model and training defaults for a dataset name, else for the loaded dataset's own `name`
    (a dataset registered under another name but built by a known reader), else the paper's."""
    preset = PRESETS.get(dataset)
    if preset is None and train_set is not None:
        preset = PRESETS.get(getattr(train_set, "name", None) or "")
    return copy.deepcopy(preset or PAPER)
