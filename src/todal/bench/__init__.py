"""`todal bench`: the paper's experiments under a named protocol, and a self-contained report."""

from .analysis import bucket_means, paired, rankdata, recall_at, spearman, verdict
from .protocols import PROTOCOLS, SEGMENTATION_PROTOCOLS, Protocol, differences, protocol
from .runner import Method, plan
from .suite import load_for, run_bench

__all__ = ["Method", "PROTOCOLS", "Protocol", "SEGMENTATION_PROTOCOLS", "bucket_means", "differences", "load_for",
           "paired", "plan", "protocol", "rankdata", "recall_at", "run_bench", "spearman", "verdict"]
