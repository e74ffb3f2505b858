"""Selection on a lazy pool never materialises more than O(N) of anything (issue 13; the million-sample
figures are in benchmarks/pool-scale). The pool is made on demand from indices, so only the strategy's own
tensors can grow with it."""

import pytest
import torch

from tinydata import largest_tensor_while
from todal import models, select
from todal.testing import SyntheticPool

C, D = 10, 8  # small_cnn width 0.0625 -> 8 features


def largest(strategy: str, n: int) -> int:
    torch.manual_seed(0)
    nets = [models.get("small_cnn", in_channels=1, num_classes=C, width=0.0625).eval() for _ in range(2)]
    pool = SyntheticPool(n, C, 8)
    labeled = torch.arange(50)
    return largest_tensor_while(lambda: select(strategy, nets[0], pool, 20, labeled=labeled, previous=nets[1],
                                               labels=labeled % C, batch_size=128))


# what each may hold per pool sample: scores / indices (random, entropy); COD's kept outputs [N, C];
# coreset's distance block to the 50 labeled points ([min(N, chunk_size), L]); BADGE's features and
# probabilities [N, D + 2C]
@pytest.mark.parametrize("strategy,per_sample", [("random", 1), ("entropy", 1), ("cod", C), ("coreset", 50),
                                                 ("badge", D + 2 * C)])
def test_selection_memory_grows_linearly_with_the_pool(strategy, per_sample):
    small, big = largest(strategy, 1500), largest(strategy, 3000)
    assert big <= 3000 * per_sample + 128 * 16 * 64  # never N x N, never N x D x C; a batch of activations aside
    assert big <= 2.2 * small or big <= 128 * 16 * 64  # linear (or batch-bound) in N, not quadratic


def test_stack_rows_writes_batches_into_one_tensor_and_checks_the_count():
    from todal.strategies.base import RowWriter, stack_rows

    parts = [torch.arange(6.0).view(3, 2), torch.arange(6.0, 10.0).view(2, 2).double()]
    out = stack_rows(5, iter(parts))
    assert out.dtype == torch.float32 and torch.equal(out, torch.cat(parts).float())
    short = RowWriter(6)
    short.add(parts[0])
    with pytest.raises(RuntimeError, match="got 3 rows, expected 6"):
        short.result()
    assert stack_rows(0, iter([])).numel() == 0


def test_batchbald_holds_its_log_probabilities_and_one_block_never_pool_by_configurations():
    """BatchBALD keeps `[N, K, C]` log-probabilities and scores the candidates a block at a time: without the
    blocks its joint probabilities would be `[M, N, C]` (30 million elements here, M = 1,000 configurations)."""
    from todal.strategies.batchbald import BLOCK_BYTES

    n, passes = 3000, 20
    assert largest("batchbald", n) <= max(n * passes * C, BLOCK_BYTES // 8)
