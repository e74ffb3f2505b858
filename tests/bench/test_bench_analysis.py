"""The analysis functions on crafted cases with hand-computed answers."""

import math

import pytest
import torch

from todal.bench.analysis import (bucket_means, bucket_names, paired, rankdata, recall_at, run_metric, spearman,
                                  unlabeled_at, verdict)
from todal.pool import Pool


def test_rankdata_averages_ties():
    assert rankdata(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [4.0, 1.0, 2.5, 2.5]


def test_spearman_by_hand():
    a = torch.tensor([1.0, 2, 3, 4, 5])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks of b: 1, 2, 3.5, 5, 3.5 -> centered (-2, -1, .5, 2, .5); r = 8 / sqrt(10 * 9.5)
    assert spearman(a, torch.tensor([5.0, 6, 7, 8, 7])) == pytest.approx(8 / math.sqrt(95))
    assert math.isnan(spearman(a, torch.ones(5)))


def test_recall_of_the_highest_losses():
    losses = torch.arange(10, 0, -1).double()  # sample 0 has the highest loss
    scores = torch.tensor([5.0, 9, 1, 8, 0, 0, 0, 0, 0, 0])  # score order 1, 3, 0, 2, 4 (ties by index)
    # k=1: {1} vs {0} -> 0; k=2: {1,3} vs {0,1} -> 1/2; k=5: {0..4} vs {0..4} -> 1
    assert recall_at(scores, losses, (0.1, 0.2, 0.5)) == [0.0, 0.5, 1.0]
    assert recall_at(losses, losses, (0.07, 0.3)) == [1.0, 1.0]  # k = ceil(0.7) = 1 and 3


def test_bucket_means_by_score_rank():
    scores, losses = torch.arange(10.0), torch.arange(10.0)
    # highest scores first: {9, 8} -> 8.5, {7, 6, 5} -> 6, {4 .. 0} -> 2
    assert bucket_means(scores, losses, (0.2, 0.5, 1.0)) == [8.5, 6.0, 2.0]
    assert bucket_names((0.05, 0.1, 1.0)) == ["0-5%", "5-10%", "10-100%"]


def test_aubc_and_the_run_metrics_by_hand():
    recs = [{"labeled_fraction": f, "accuracy": a} for f, a in ((0.1, 0.5), (0.2, 0.7), (0.4, 0.8))]
    assert run_metric(recs, "aubc") == pytest.approx((0.1 * 0.6 + 0.2 * 0.75) / 0.3)
    assert run_metric(recs, "final") == 0.8
    assert run_metric(recs, "mean") == pytest.approx(2.0 / 3)


def _runs(a_final, b_final):
    rec = lambda acc: [{"labeled_fraction": 0.1, "accuracy": 0.0}, {"labeled_fraction": 0.2, "accuracy": acc}]
    return {"a": {t: rec(x) for t, x in enumerate(a_final)}, "b": {t: rec(x) for t, x in enumerate(b_final)}}


def test_paired_wins_only_when_every_trial_agrees_beyond_the_spread():
    c = paired(_runs([0.80, 0.82, 0.81], [0.78, 0.79, 0.785]), "a", "b", "final")
    assert c["n"] == 3 and c["wins"] == 3 and c["mean"] == pytest.approx(0.025)
    assert verdict(c) == "a better"
    assert verdict(paired(_runs([0.70, 0.71], [0.80, 0.82]), "a", "b", "final")) == "b better"
    assert verdict(paired(_runs([0.80, 0.78, 0.83], [0.79, 0.79, 0.79]), "a", "b", "final")) == "within noise"
    assert verdict(paired(_runs([0.90], [0.10]), "a", "b", "final")) == "within noise"  # one trial: never a win
    # same sign everywhere but a spread larger than the mean: noise
    assert verdict(paired(_runs([0.801, 0.90], [0.80, 0.80]), "a", "b", "final")) == "within noise"


def test_unlabeled_at_a_cycle_includes_samples_labeled_later():
    pool = Pool(6, 2)
    pool.add(torch.tensor([0, 1]), torch.tensor([0, 1]), cycle=0)
    pool.add(torch.tensor([4]), torch.tensor([0]), cycle=1)
    assert unlabeled_at(pool, 0).tolist() == [2, 3, 4, 5]
    assert unlabeled_at(pool, 1).tolist() == [2, 3, 5]


def test_paired_differences_have_a_t_interval_and_the_paired_t_test():
    from scipy import stats

    runs = {"a": {t: [{"accuracy": v, "labeled_fraction": 1.0}] for t, v in enumerate([0.80, 0.82, 0.85])},
            "b": {t: [{"accuracy": v, "labeled_fraction": 1.0}] for t, v in enumerate([0.78, 0.81, 0.80])}}
    c = paired(runs, "a", "b", "final")
    diffs = [0.02, 0.01, 0.05]
    assert c["diffs"] == pytest.approx(diffs) and c["mean"] == pytest.approx(sum(diffs) / 3)
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / 3 ** 0.5
    assert (c["low"], c["high"]) == (pytest.approx(c["mean"] - half), pytest.approx(c["mean"] + half))
    assert c["p"] == pytest.approx(stats.ttest_rel([0.80, 0.82, 0.85], [0.78, 0.81, 0.80]).pvalue)
    assert verdict(c) == ("a better" if c["low"] > 0 else "within noise")
    # 3 of 3 ahead but the interval crosses zero: within noise (the old rule called such pairs a win)
    runs["b"] = {t: [{"accuracy": v, "labeled_fraction": 1.0}] for t, v in enumerate([0.795, 0.70, 0.849])}
    c = paired(runs, "a", "b", "final")
    assert c["wins"] == 3 and c["low"] < 0 and verdict(c) == "within noise"


def test_label_savings_interpolate_the_curve_to_the_references_final_accuracy():
    from todal.bench.analysis import label_savings, labels_to_reach

    assert labels_to_reach([0.1, 0.2, 0.3], [0.5, 0.7, 0.9], 0.8) == pytest.approx(0.25)
    assert labels_to_reach([0.1, 0.2], [0.5, 0.6], 0.8) is None
    curve = lambda accs: [{"accuracy": a, "labeled_fraction": f} for a, f in zip(accs, [0.1, 0.2, 0.3, 0.4])]  # noqa
    runs = {"random": {0: curve([0.5, 0.6, 0.7, 0.8]), 1: curve([0.5, 0.6, 0.7, 0.8])},
            "cod": {0: curve([0.5, 0.7, 0.8, 0.85]), 1: curve([0.5, 0.6, 0.75, 0.9])}}
    s = label_savings(runs, "cod")
    # mean cod curve 0.5, 0.65, 0.775, 0.875 reaches 0.8 at 0.3 + 0.025/0.1 * 0.1 = 0.325 of random's 0.4
    assert s["share"] == pytest.approx(0.325 / 0.4)
    assert s["per_trial"] == [pytest.approx(0.3 / 0.4), pytest.approx((0.3 + 0.05 / 0.15 * 0.1) / 0.4)]
