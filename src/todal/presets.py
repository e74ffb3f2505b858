"""Per-dataset defaults for what the command line leaves unset.

The paper's setting (appendix B) is what `TrainConfig` defaults to: ResNet-18, 200 epochs, SGD
0.1. That takes days on a CPU, so small datasets get a small CNN and fewer epochs; every value
can be overridden.
"""

from __future__ import annotations

PAPER = {"model": "resnet18", "model_options": {}, "epochs": 200, "batch_size": 128, "lr": 0.1}

PRESETS = {
    # The embedded demo: sklearn digits (1,257 training images of 8x8), minutes on 2 cores.
    "digits": {"model": "small_cnn", "model_options": {}, "epochs": 20, "batch_size": 32, "lr": 0.05},
    # Fashion-MNIST on a CPU: the protocol of benchmarks/fashion-mnist-core.
    "fashion-mnist": {"model": "small_cnn", "model_options": {"width": 0.5}, "epochs": 12, "batch_size": 64,
                      "lr": 0.05},
}


def defaults_for(dataset: str) -> dict:
    """Model and training defaults for a dataset name (the paper's for the rest)."""
    return dict(PRESETS.get(dataset, PAPER))
