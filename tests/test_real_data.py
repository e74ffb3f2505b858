"""One end-to-end run on real Fashion-MNIST (a subset, two cycles): the path users take."""

import torch

from todal import ActiveLoop
from todal.models import ModelSource
from todal.data import load_dataset


def test_cod_semi_on_real_fashion_mnist(tmp_path):
    train, test = load_dataset("fashion-mnist")
    assert len(train) == 60000 and len(test) == 10000
    g = torch.Generator().manual_seed(0)
    train = train.subset(torch.randperm(len(train), generator=g)[:3000])
    test = test.subset(torch.randperm(len(test), generator=g)[:1000])
    loop = ActiveLoop(ModelSource("small_cnn", {"width": 0.5}), train, test, strategy="cod", semi_supervised=True,
                      initial=300, budget=150, cycles=2, epochs=4, train={"batch_size": 64, "lr": 0.05},
                      workdir=tmp_path, seed=0)
    records = loop.run()
    assert [r["labeled"] for r in records] == [300, 450]
    assert records[-1]["accuracy"] > 0.4  # 10 classes: chance is 0.10; ~30 SGD steps in all
    assert len(records[0]["selected"]) == 150
