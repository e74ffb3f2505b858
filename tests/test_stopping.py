"""When to stop: κ, overall uncertainty, the plateau of the estimate, the recommendation, and the coverage of the
estimate's interval on a simulated stream whose true accuracy is known."""

import math

import pytest
import torch

from todal.errors import TodalError
from todal.stopping import StopRule, cohen_kappa, criteria, gain_per_100, mean_uncertainty, recommend, should_stop, wilson


def test_kappa_by_hand():
    # 10 items: agreement 7/10; marginals a = (5 zeros, 5 ones), b = (6 zeros, 4 ones): p_e = (5*6 + 5*4)/100 = 0.5
    a = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    b = torch.tensor([0, 0, 0, 0, 1, 0, 1, 1, 1, 0])
    assert cohen_kappa(a, b) == pytest.approx((0.7 - 0.5) / 0.5)
    b = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    assert cohen_kappa(a, b) == pytest.approx((0.9 - 0.5) / 0.5)
    assert cohen_kappa(a, a) == 1.0 and cohen_kappa(torch.zeros(4), torch.zeros(4)) == 1.0
    # three classes: confusion [[2,1,0],[0,2,0],[1,0,1]] (rows a), n=7: p_o=5/7, p_e=(3*3+2*3+2*1)/49=17/49
    a = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    b = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    assert cohen_kappa(a, b) == pytest.approx((5 / 7 - 17 / 49) / (1 - 17 / 49))
    assert cohen_kappa(a, 1 - a.clamp(max=1)) < 0  # worse than chance


def test_overall_uncertainty_by_hand():
    assert mean_uncertainty(torch.tensor([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx(0.5)
    assert mean_uncertainty(torch.full((3, 4), 0.25)) == pytest.approx(1.0)


def test_wilson_matches_hand_values():
    lo, hi = wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) == (0.0, 1.0)


def test_gain_per_100_labels_is_the_paired_difference_with_agresti_mins_interval():
    # the same 100 validation items: 12 newly right, 2 newly wrong -> +10 points, over 200 labels: +5 per 100
    gain, low, high = gain_per_100(12, 2, 100, 200)
    assert gain == pytest.approx(5.0)
    b, c, m = 12.5, 2.5, 102.0
    se = math.sqrt(b + c - (b - c) ** 2 / m) / m
    assert low == pytest.approx(50 * ((b - c) / m - 1.959963984540054 * se))
    assert high == pytest.approx(50 * ((b - c) / m + 1.959963984540054 * se))
    # paired, it is far tighter than two independent 100-item estimates (80% then 90%) would be
    l0, u0 = wilson(80, 100)
    l1, u1 = wilson(90, 100)
    assert high - low < 0.75 * 50 * (math.sqrt((u1 - 0.9) ** 2 + (0.8 - l0) ** 2) + math.sqrt((0.9 - l1) ** 2 + (u0 - 0.8) ** 2))


def test_kappa_criterion_needs_the_whole_window_above_the_threshold():
    rule = StopRule()
    steps = [{"kappa": None}, {"kappa": 0.995}, {"kappa": 0.999}]
    assert not criteria(steps, rule)["kappa_stop"]  # two values, the window is 3
    steps.append({"kappa": 0.97})
    c = criteria(steps, rule)
    assert c["kappa_mean"] == pytest.approx((0.995 + 0.999 + 0.97) / 3) and not c["kappa_stop"]
    steps += [{"kappa": 0.999}, {"kappa": 0.999}]
    c = criteria(steps, rule)  # the last three: 0.97, 0.999, 0.999 -> mean 0.9893
    assert not c["kappa_stop"] and should_stop(c, rule) is None
    c = criteria(steps + [{"kappa": 0.999}], rule)
    assert c["kappa_stop"] and should_stop(c, rule) == ("predictions stabilized: mean κ 0.9990 over the last 3 steps "
                                                        ">= 0.99")


def test_the_recommendation_says_what_it_rests_on():
    rule = StopRule()
    early = [{"kappa": None, "labels": 100}, {"kappa": 0.8, "labels": 200, "paired": (9, 1, 50)}]
    verdict, text = recommend(criteria(early, rule), rule)
    assert verdict == "keep labeling" and "κ between the last two models 0.800" in text
    assert "accuracy +16.00 points per 100 labels" in text
    flat = [{"kappa": 0.995, "labels": 1000}] * 3 + [{"kappa": 0.996, "labels": 1100, "paired": (1, 1, 500)}]
    verdict, text = recommend(criteria(flat, rule), rule)
    assert verdict == "stop", text
    assert "(stop at 0.99: met)" in text and "plateau below +1.00: met)" in text
    settled = [{"kappa": 0.9, "labels": 1000, "uncertainty": 0.2}] * 3 + [
        {"kappa": 0.97, "labels": 1100, "paired": (1, 1, 500), "uncertainty": 0.04}]
    verdict, text = recommend(criteria(settled, rule), rule)  # κ not met; uncertainty met, and flat
    assert verdict == "stop" and "(stop at 0.99: not met)" in text and "(stop below 0.05: met)" in text, text
    verdict, _ = recommend(criteria(flat[:3] + [{"kappa": 0.9, "labels": 1100, "paired": (1, 1, 500)}], rule), rule)
    assert verdict == "diminishing returns"


def test_stop_rules_are_checked():
    with pytest.raises(TodalError, match="'criterion' parameter of StopRule must be one of kappa, uncertainty"):
        StopRule(criterion="never")
    with pytest.raises(TodalError, match="'threshold' parameter of StopRule must be a float in \\[0, 1\\]"):
        StopRule(threshold=2)


def test_the_estimates_interval_covers_a_known_accuracy_as_often_as_it_says():
    """A simulated stream: a model of true accuracy 0.83 on a pool; each step adds 20 random validation labels.
    The 95% interval must cover 0.83 in about 95% of the (session, step) pairs (at least 90%)."""
    g = torch.Generator().manual_seed(0)
    true, covered, total, widths = 0.83, 0, 0, []
    for session in range(300):
        correct = n = 0
        for step in range(8):
            draws = torch.rand(20, generator=g) < true
            correct, n = correct + int(draws.sum()), n + 20
            lo, hi = wilson(correct, n)
            covered += lo <= true <= hi
            total += 1
            widths.append((step, hi - lo))
    assert covered / total >= 0.93
    first = [w for s, w in widths if s == 0]
    last = [w for s, w in widths if s == 7]
    assert sum(last) / len(last) < 0.45 * sum(first) / len(first)  # it narrows as labels come
