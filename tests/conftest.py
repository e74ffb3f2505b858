"""Shared fixtures: every test that takes `seed` must pass for any seed."""

import pytest

from tinydata import blobs


@pytest.fixture(params=[0, 1])
def seed(request) -> int:
    """Every test that takes `seed` must pass for any seed; two are tried."""
    return request.param


@pytest.fixture
def data(seed):
    return blobs(120, seed), blobs(60, seed + 100)
