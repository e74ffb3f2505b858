"""Report sentences: a winner only with the paired evidence, else "within noise"."""

import pytest

from todal.bench.analysis import paired, verdict
from todal.bench.report import sentence


def _c(a, b):
    rec = lambda acc: [{"labeled_fraction": 0.1, "accuracy": acc}]
    c = paired({"x": {t: rec(v) for t, v in enumerate(a)}, "y": {t: rec(v) for t, v in enumerate(b)}}, "x", "y", "final")
    return {**c, "verdict": verdict(c)}


def test_a_win_is_stated_from_the_winners_side_with_the_trial_count():
    text = sentence(_c([0.70, 0.71, 0.70], [0.80, 0.80, 0.81]))
    assert text == ("- **y beats x** on final accuracy: y - x = +10.00 points (95% CI +7.52 to +12.48, paired t-test "
                    "p = 0.00332; y ahead in 3 of 3 trials).")


def test_no_winner_within_noise():
    text = sentence(_c([0.80, 0.78], [0.79, 0.79]))
    assert "**within noise**" in text and "x ahead in 1 of 2 trials" in text and "beats" not in text


def test_headline_figure_pairs_each_method_with_random_by_trial(tmp_path):
    from todal.bench import figures

    def summary(seeds, curves):  # curves: per seed, accuracy at 0.1 and 0.3 labeled
        return {"seeds": seeds, "cycles": [{"labeled_fraction": f, "accuracy_mean": sum(c[i] for c in curves) / len(curves),
                                            "accuracy": [c[i] for c in curves]} for i, f in enumerate((0.1, 0.3))]}

    s = {"random": summary([0, 1], [(0.5, 0.7), (0.6, 0.8)]), "cod+semi": summary([0, 1], [(0.6, 0.8), (0.6, 0.9)]),
         "margin": summary([1], [(0.7, 0.9)])}
    assert figures._per_trial_aubc(s["cod+semi"], "accuracy") == pytest.approx({0: 0.7, 1: 0.75})
    assert [m for m in s if figures._is_tod(m)] == ["cod+semi"]
    figures.headline(s, tmp_path / "fig7.png", title="t")
    assert (tmp_path / "fig7.png").stat().st_size > 10_000
