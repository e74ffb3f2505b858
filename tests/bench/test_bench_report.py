"""Report sentences: a winner only with the paired evidence, else "within noise"."""

from todal.bench.analysis import paired, verdict
from todal.bench.report import sentence


def _c(a, b):
    rec = lambda acc: [{"labeled_fraction": 0.1, "accuracy": acc}]
    c = paired({"x": {t: rec(v) for t, v in enumerate(a)}, "y": {t: rec(v) for t, v in enumerate(b)}}, "x", "y", "final")
    return {**c, "verdict": verdict(c)}


def test_a_win_is_stated_from_the_winners_side_with_the_trial_count():
    text = sentence(_c([0.70, 0.71, 0.70], [0.80, 0.80, 0.81]))
    assert text == ("- **y beats x** on final accuracy: by 10.00 points on average, ahead in 3 of 3 paired trials "
                    "(std of the differences 1.00).")


def test_no_winner_within_noise():
    text = sentence(_c([0.80, 0.78], [0.79, 0.79]))
    assert "**within noise**" in text and "x ahead in 1 of 2 trials" in text and "beats" not in text
