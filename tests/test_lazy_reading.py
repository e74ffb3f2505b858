"""A dataset read a sample at a time (files) is read ahead by DataLoader workers; only reading moves, so
training, scoring and selection give the same results with or without them."""

import os

import pytest
import torch
from torch.utils.data import TensorDataset

from tinydata import blobs, mlp
from todal import EMA, TrainConfig, fit, select
from todal.errors import TodalError
from todal.inference import fetch, is_lazy, read_workers
from todal.labeled import PoolLabels
from todal.tasks import Classification


class Lazy:
    """ds[i] only, like files on disk; notes which processes read it."""

    def __init__(self, base, log):
        self.base, self.log, self.num_classes = base, log, base.num_classes

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.base.x[i], int(self.base.y[i])


def train(ds, workers, monkeypatch):
    monkeypatch.setenv("TODAL_READ_WORKERS", str(workers))
    torch.manual_seed(0)
    model = mlp()
    ema = EMA(model, 0.9)
    fit(model, Classification(3), ds, torch.arange(40), cfg=TrainConfig(epochs=2, batch_size=8, lr=0.05),
        generator=torch.Generator().manual_seed(0), unlabeled=torch.arange(40, 100), ema=ema, consistency="default")
    picked = select("entropy", model, ds, 10, labeled=torch.arange(40), batch_size=16)
    return [p.detach().clone() for p in model.parameters()], picked


def test_lazy_datasets_are_read_by_workers_with_the_same_results(tmp_path, monkeypatch):
    log = tmp_path / "reads.txt"
    ds = Lazy(blobs(100, 0), log)
    assert is_lazy(ds) and is_lazy(PoolLabels(ds, torch.zeros(100, dtype=torch.long)))
    here, picked_here = train(ds, 0, monkeypatch)
    assert set(log.read_text().split()) == {str(os.getpid())}
    log.unlink()
    ahead, picked_ahead = train(ds, 2, monkeypatch)
    reads = log.read_text().split()
    here_reads = reads.count(str(os.getpid()))
    # every batch in worker processes; here only select()'s one look at the 40 labels
    assert here_reads <= 40 and len(reads) - here_reads >= 2 * 100 and len(set(reads)) >= 3
    assert all(torch.equal(a, b) for a, b in zip(here, ahead)) and torch.equal(picked_here, picked_ahead)


def test_in_memory_datasets_are_read_in_process_and_tensor_datasets_in_one_gather():
    data = blobs(20, 0)
    assert not is_lazy(data) and read_workers(data) == 0
    tds = TensorDataset(data.x, data.y)
    assert not is_lazy(tds)
    x, y = fetch(tds, torch.tensor([3, 1]))
    assert torch.equal(x, data.x[[3, 1]]) and torch.equal(y, data.y[[3, 1]])


def test_a_bad_worker_count_says_what_to_set(monkeypatch):
    monkeypatch.setenv("TODAL_READ_WORKERS", "two")
    with pytest.raises(TodalError, match="TODAL_READ_WORKERS=0"):
        read_workers(Lazy(blobs(5, 0), os.devnull))
