"""Data tests never look at the real $HOME, $TODAL_DATA or /usr/share/datasets unless they say so."""

from __future__ import annotations

import pytest

from todal.data import _paths


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty HOME and system folder, no TODAL_DATA: the look-up only sees what the test writes."""
    home, system = tmp_path / "home", tmp_path / "system"
    home.mkdir()
    system.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TODAL_DATA", raising=False)
    monkeypatch.setattr(_paths, "SYSTEM_DIR", system)
    return tmp_path
