import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from todal import Pool
from todal.errors import TodalError


def test_add_records_cycle_and_labels():
    pool = Pool(10, num_classes=3)
    pool.add([4, 1], [2, 0], cycle=0)
    pool.add([7], [1])
    assert pool.labeled.tolist() == [1, 4, 7]
    assert pool.cycle[[1, 4, 7]].tolist() == [0, 0, 1]
    assert pool.labels[[1, 4, 7]].tolist() == [0, 2, 1]
    assert len(pool.unlabeled) == 7 and len(pool) == 3


@pytest.mark.parametrize("indices, labels, message", [
    ([10], [0], "outside \\[0, 10\\)"),
    ([1, 1], [0, 0], "repeated indices"),
    ([2], [5], "label 5 outside \\[0, 3\\)"),
    ([2, 3], [0], "2 indices but 1 labels"),
])
def test_bad_additions_are_refused(indices, labels, message):
    pool = Pool(10, num_classes=3)
    with pytest.raises(TodalError, match=message):
        pool.add(indices, labels)


def test_labeling_twice_is_refused():
    pool = Pool(5)
    pool.add([2], [0])
    with pytest.raises(TodalError, match="already labeled"):
        pool.add([2], [1])


def test_save_load_round_trip(tmp_path):
    pool = Pool(20, num_classes=4)
    pool.add([3, 5], [1, 2], cycle=0)
    pool.add([9], [3], cycle=1)
    pool.save(tmp_path / "pool.json")
    back = Pool.load(tmp_path / "pool.json")
    assert torch.equal(back.cycle, pool.cycle) and torch.equal(back.labels, pool.labels)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a todal.pool file"),
    ('{"format": "todal.pool", "version": 9}', "format version 9"),
    ('{"format": "todal.pool", "version": 1, "size": 5, "cycles": [{"indices": [7], "labels": [0]}]}',
     "outside \\[0, 5\\)"),
])
def test_corrupted_pool_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "pool.json"
    path.write_text(content)
    with pytest.raises(TodalError, match=message):
        Pool.load(path)


def test_truncated_pool_file_is_refused(tmp_path):
    pool = Pool(50)
    pool.add(list(range(10)), [0] * 10)
    pool.save(tmp_path / "pool.json")
    text = (tmp_path / "pool.json").read_text()
    (tmp_path / "pool.json").write_text(text[: len(text) // 2])
    with pytest.raises(TodalError, match="corrupted"):
        Pool.load(tmp_path / "pool.json")


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 60), batches=st.lists(st.lists(st.integers(0, 80), max_size=10), max_size=6))
def test_invariants_under_random_additions(size, batches):
    pool = Pool(size, num_classes=2)
    for c, batch in enumerate(batches):
        try:
            pool.add(batch, [0] * len(batch), cycle=c)
        except TodalError:
            continue
    lab, unl = set(pool.labeled.tolist()), set(pool.unlabeled.tolist())
    assert lab.isdisjoint(unl) and lab | unl == set(range(size))
    assert len(pool) == len(lab) == int((pool.labels >= 0).sum())
    state = json.loads(json.dumps(pool.state_dict()))
    assert torch.equal(Pool.from_state_dict(state).cycle, pool.cycle)
