"""k-center greedy and the Core-set strategy on cases whose answer follows from the definition."""

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import strategies
from todal.strategies import Context
from todal.strategies.coreset import k_center_greedy
from todal.tasks import Classification


def test_k_center_picks_the_farthest_point_in_1d():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    # from center 0: 11 is farthest; then 2 (distance 2 to its nearest center), then 1 or 10 (tie: first)
    assert k_center_greedy(x, torch.tensor([0]), 3).tolist() == [4, 2, 1]


def test_k_center_covers_the_corners_of_a_square_in_2d():
    corners = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    inner = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, 2.0]])
    x = torch.cat([inner, corners])
    centers = torch.zeros(7, dtype=torch.bool)
    centers[0] = True  # (1, 1): the opposite corner (4, 4) is farthest, then the two side corners
    picked = k_center_greedy(x, centers, 3)
    assert picked.tolist() == [6, 4, 5]


def test_k_center_accepts_a_mask_or_positions_alike():
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[2, 5, 7]] = True
    assert torch.equal(k_center_greedy(x, mask, 6), k_center_greedy(x, torch.tensor([2, 5, 7]), 6))


def test_k_center_without_centers_starts_from_a_seeded_random_point():
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    a = k_center_greedy(x, torch.empty(0, dtype=torch.long), 5, generator=torch.Generator().manual_seed(3))
    b = k_center_greedy(x, torch.empty(0, dtype=torch.long), 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    first = torch.randint(30, (1,), generator=torch.Generator().manual_seed(3)).item()
    assert a[0].item() == first
    assert a[1].item() == int(((x - x[first]) ** 2).sum(1).argmax())


def test_k_center_never_repeats_a_point_even_among_duplicates():
    x = torch.zeros(6, 2)  # every distance is 0
    picked = k_center_greedy(x, torch.tensor([0, 1]), 4)
    assert sorted(picked.tolist()) == [2, 3, 4, 5]


def test_chunked_k_center_equals_unchunked(seed):
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(seed))
    centers = torch.arange(0, 500, 17)
    full = k_center_greedy(x, centers, 40, chunk_size=10_000)
    assert torch.equal(k_center_greedy(x, centers, 40, chunk_size=7), full)
    assert torch.equal(k_center_greedy(x, centers, 40, chunk_size=64), full)


def test_k_center_on_50000_points_finds_the_planted_outlier():
    x = torch.randn(50_000, 64, generator=torch.Generator().manual_seed(0))
    x[31_337] = 100.0
    picked = k_center_greedy(x, torch.arange(300), 5)
    assert picked[0].item() == 31_337 and len(picked.unique()) == 5


def test_k_center_refuses_bad_arguments():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="'k' parameter of k_center_greedy must be an int in \\[0, 3\\]"):
        k_center_greedy(x, torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="'chunk_size' parameter"):
        k_center_greedy(x, torch.tensor([0]), 1, chunk_size=0)
    with pytest.raises(ValueError, match="'centers' parameter"):
        k_center_greedy(x, torch.zeros(4, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="'features' parameter"):
        k_center_greedy(torch.randn(5), torch.tensor([0]), 1)


POINTS = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [0.2, 0.2], [-3.0, 0.0]])


def ctx_for(labeled, unlabeled, candidates=None) -> Context:
    ds = TinyData(POINTS, torch.zeros(len(POINTS)), 3)
    model = nn.Sequential(nn.Linear(2, 3))  # embeddings = the input of the last Linear = the points
    labeled = torch.tensor(labeled)
    return Context(model=model, task=Classification(3), dataset=ds, labeled=labeled,
                   unlabeled=torch.tensor(unlabeled), labels=ds.y[labeled], generator=torch.Generator().manual_seed(0),
                   candidates=None if candidates is None else torch.tensor(candidates))


def test_coreset_strategy_picks_the_points_farthest_from_the_labeled_set():
    ctx = ctx_for([0, 1], [2, 3, 4, 5])
    assert strategies.get("coreset").select(ctx, 2).tolist() == [3, 5]


def test_coreset_strategy_chooses_from_the_candidates():
    ctx = ctx_for([0, 1], [2, 3, 4, 5], candidates=[2, 4, 5])
    assert strategies.get("coreset").select(ctx, 1).tolist() == [5]


def test_coreset_option_is_validated():
    with pytest.raises(ValueError, match="'chunk_size' parameter of strategy 'coreset' must be an int >= 1"):
        strategies.get("coreset", chunk_size=0)
    with pytest.raises(ValueError, match="'chunk' parameter of strategy 'coreset'"):
        strategies.get("coreset", chunk=10)


@pytest.mark.parametrize("name", ["coreset", "badge"])
def test_feature_memory_is_bounded_and_the_error_names_the_option(name):
    from tinydata import blobs, mlp
    from todal import select, strategies
    from todal.errors import TodalError

    data, labeled, model = blobs(400, 0), list(range(20)), mlp()
    # 380 candidates x 16 features x 4 bytes = 24 KB (coreset: + 20 labeled rows) over a 10 KB bound
    with pytest.raises(TodalError, match=rf"Strategy '{name}' would hold .* over max_memory_gb=1e-05; pass the "
                                         r"strategy option subset=\d+"):
        select(name, model, data, 5, labeled=labeled, max_memory_gb=1e-5)
    picked = select(name, model, data, 5, labeled=labeled, max_memory_gb=1e-5, subset=50)
    assert len(picked) == 5 and min(picked.tolist()) >= 20
    again = select(name, model, data, 5, labeled=labeled, max_memory_gb=1e-5, subset=50)
    assert picked.tolist() == again.tolist()  # the subset is drawn from the seeded generator
    assert strategies.get(name).subset is None  # the default keeps every candidate, as the paper
