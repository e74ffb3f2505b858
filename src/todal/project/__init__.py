"""Labeling projects: a folder of a person's images, the labels they give, the model that asks.

`Project.init(...)` / `Project(root)` (see `todal.project.core`); its state is a `Store` (SQLite);
`todal.project.server.serve` is the labeling page; `todal.project.labelstudio` reads and writes
Label Studio's JSON.
"""

from .core import Project
from .store import Store

__all__ = ["Project", "Store"]
