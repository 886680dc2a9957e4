"""Metrics against values worked out by hand on small explicit examples."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from ia2.evaluation import metrics, scoring

# Six predictions; none sits on a bin edge of 2 or 15 equal-width bins (edges k/15).
CONF = np.array([0.95, 0.81, 0.84, 0.30, 0.62, 0.55])
CORRECT = np.array([1, 0, 1, 1, 0, 1], dtype=float)


def test_ece_equal_width_15_bins():
    # 15 bins of width 1/15; bin b holds (b/15, (b+1)/15]:
    #   0.95 -> bin 14 alone: acc 1, conf .95, gap .05
    #   0.81, 0.84 -> bin 12 (0.8, 0.8667]: acc 1/2, conf .825, gap .325, weight 2
    #   0.30 -> bin 4 (0.2667, 0.3333]: acc 1, gap .70
    #   0.62 -> bin 9 (0.6, 0.6667]: acc 0, gap .62
    #   0.55 -> bin 8 (0.5333, 0.6]: acc 1, gap .45
    want = (0.05 + 2 * 0.325 + 0.70 + 0.62 + 0.45) / 6  # = 2.47 / 6
    assert metrics.ece(CONF, CORRECT) == pytest.approx(want, abs=1e-12)
    assert metrics.ece(CONF, CORRECT, n_bins=15, scheme="width") == pytest.approx(2.47 / 6, abs=1e-12)
    bins = metrics.reliability(CONF, CORRECT)
    assert [b["count"] for b in bins] == [1, 1, 1, 2, 1]  # bins 4, 8, 9, 12, 14 in order
    assert bins[3]["confidence"] == pytest.approx(0.825) and bins[3]["accuracy"] == 0.5


def test_ece_equal_width_2_bins():
    # bin 0 = [0, .5]: {.30} acc 1, gap .70
    # bin 1 = (.5, 1]: {.95,.81,.84,.62,.55} acc 3/5 = .6, conf 3.77/5 = .754, gap .154, weight 5
    want = (0.70 + 5 * 0.154) / 6  # = 1.47 / 6
    assert metrics.ece(CONF, CORRECT, n_bins=2) == pytest.approx(want, abs=1e-12)


def test_ece_one_bin_is_the_overall_gap():
    # accuracy 4/6, mean confidence 4.07/6
    assert metrics.ece(CONF, CORRECT, n_bins=1) == pytest.approx(abs(4 / 6 - 4.07 / 6), abs=1e-12)
    assert metrics.ece(CONF, CORRECT, n_bins=1, scheme="mass") == pytest.approx(abs(4 / 6 - 4.07 / 6), abs=1e-12)


def test_ece_equal_mass_3_bins():
    # sorted by confidence: .30(1) .55(1) | .62(0) .81(0) | .84(1) .95(1)
    #   bin A: acc 1, conf .425, gap .575;  bin B: acc 0, conf .715, gap .715;  bin C: acc 1, conf .895, gap .105
    want = (2 * 0.575 + 2 * 0.715 + 2 * 0.105) / 6  # = 2.79 / 6
    assert metrics.ece(CONF, CORRECT, n_bins=3, scheme="mass") == pytest.approx(want, abs=1e-12)
    bins = metrics.reliability(CONF, CORRECT, n_bins=3, scheme="mass")
    assert [b["count"] for b in bins] == [2, 2, 2]
    assert [b["accuracy"] for b in bins] == [1.0, 0.0, 1.0]


def test_ece_equal_mass_more_bins_than_examples():
    # 15 bins over 6 examples: every example alone, so ECE is the mean |correct − confidence|
    want = (0.05 + 0.81 + 0.16 + 0.70 + 0.62 + 0.45) / 6
    assert metrics.ece(CONF, CORRECT, n_bins=15, scheme="mass") == pytest.approx(want, abs=1e-12)
    assert sum(b["count"] for b in metrics.reliability(CONF, CORRECT, scheme="mass")) == 6


def test_ece_perfectly_calibrated_is_zero():
    conf = np.array([0.7] * 10)
    correct = np.array([1] * 7 + [0] * 3, dtype=float)
    assert metrics.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ece(conf, correct, scheme="mass", n_bins=1) == pytest.approx(0.0, abs=1e-12)


PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
GOLD = np.array([0, 2, 1])


def test_brier_by_hand():
    # (.7−1)² + .2² + .1² = .09 + .04 + .01 = .14
    # .1² + .6² + (.3−1)² = .01 + .36 + .49 = .86
    # .3² + (.3−1)² + .4² = .09 + .49 + .16 = .74
    assert metrics.brier(PROBS, GOLD) == pytest.approx((0.14 + 0.86 + 0.74) / 3, abs=1e-12)


def test_nll_by_hand():
    want = -(math.log(0.7) + math.log(0.3) + math.log(0.3)) / 3
    assert metrics.nll(PROBS, GOLD) == pytest.approx(want, abs=1e-12)
    # a zero probability is clipped, not infinite
    assert math.isfinite(metrics.nll(np.array([[1.0, 0.0]]), np.array([1])))


def test_label_metrics_by_hand():
    out = metrics.label_metrics(PROBS, GOLD)
    # predictions 0, 1, 2 vs gold 0, 2, 1: one right out of three
    assert out["accuracy"] == pytest.approx(1 / 3)
    # confidences .7 (right), .6 (wrong), .4 (wrong), each alone in a 15-bin width bin and in a mass bin
    assert out["ece"] == pytest.approx((0.3 + 0.6 + 0.4) / 3)
    assert out["ece_equal_mass"] == pytest.approx((0.3 + 0.6 + 0.4) / 3)
    assert out["brier"] == pytest.approx(1.74 / 3)
    assert out["nll"] == pytest.approx(-(math.log(0.7) + 2 * math.log(0.3)) / 3)


def test_accuracy_counts_every_example():
    # a uniform (undecided) row and a wrong row stay in the denominator
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    gold = np.array([0, 1, 0, 1])
    assert metrics.label_metrics(probs, gold)["accuracy"] == pytest.approx(1 / 4)
    assert metrics.label_metrics(probs[:1], gold[:1])["accuracy"] == 1.0


def test_vocab_metrics_by_hand():
    top_prob = np.array([0.5, 0.2])
    top_correct = np.array([True, False])
    gold_prob = np.array([0.5, 0.1])
    out = metrics.vocab_metrics(top_prob, top_correct, gold_prob)
    assert out["accuracy_vocab"] == 0.5
    assert out["ece_vocab"] == pytest.approx((0.5 + 0.2) / 2)
    assert out["nll_vocab"] == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)


def test_scores_label_probs_renormalise_over_labels():
    scores = scoring.Scores(
        np.log(np.array([[0.2, 0.3], [0.01, 0.04]])),
        np.zeros(2),
        np.zeros(2, dtype=int),
        np.zeros((2, 2)),
        np.ones(2),
        None,
    )
    np.testing.assert_allclose(scores.label_probs(), [[0.4, 0.6], [0.2, 0.8]], rtol=1e-12)


def test_summarise_combines_label_and_vocab_metrics():
    label_logp = np.log(np.array([[0.6, 0.2], [0.1, 0.3]]))
    scores = scoring.Scores(
        label_logp,
        np.array([0.6, 0.5]),
        np.array([11, 99]),
        np.array([[0.6, 0.2], [0.1, 0.3]]),
        np.array([0.9, 0.8]),
        None,
    )
    out = scoring.summarise(scores, np.array([0, 1]), label_first=[11, 12])
    # label-renormalised: [.75, .25] right, [.25, .75] right
    assert out["accuracy"] == 1.0
    assert out["nll"] == pytest.approx(-math.log(0.75))
    # full vocabulary: first row's top token 11 is gold's first token; second row's top 99 is not 12
    assert out["accuracy_vocab"] == 0.5
    assert out["nll_vocab"] == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2)
    # reference parity: one bin (n < 15); confidences 0.6/0.9 and 0.5/0.8, top-1 correct 1 and 0
    assert out["ece_top1_reference"] == pytest.approx(abs(0.5 - (0.6 / 0.9 + 0.5 / 0.8) / 2))


def test_layer_cosine():
    import torch

    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [1.0, -1.0]], [[1.0, 0.0], [2.0, 2.0]]])
    # layer 0: cos 1 and 0 -> .5; layer 1: cos 0 and 1 -> .5
    assert scoring.layer_cosine(student, teacher) == pytest.approx([0.5, 0.5])


def test_reference_bins_are_n_over_15_with_the_remainder_last():
    conf = np.linspace(0.05, 0.95, 17)
    bins = metrics.reliability(conf, np.ones(17), 15, scheme="reference")
    assert [b["count"] for b in bins] == [1] * 14 + [3]
    assert [b["count"] for b in metrics.reliability(conf[:10], np.ones(10), 15, scheme="reference")] == [10]


def test_reference_metrics_reproduce_the_softmax_on_probabilities_defect():
    """Two labels with probabilities 0.9 / 0.05: the reference's label confidence is softmax([0.9, 0.05])[0] ≈ 0.70,
    not 0.9 / 0.95; its top-1 confidence is renormalised over the top 10 tokens."""
    label_probs = np.array([[0.9, 0.05]])
    got = metrics.reference_metrics(np.array([0.9 / 0.96]), np.array([True]), label_probs, np.array([0]))
    squashed = np.exp(0.9) / (np.exp(0.9) + np.exp(0.05))
    assert got["ece_label_reference"] == pytest.approx(1 - squashed)
    assert got["ece_top1_reference"] == pytest.approx(1 - 0.9 / 0.96)


def test_sample_std_is_bessel_corrected_per_column_and_zero_for_one_seed():
    assert metrics.sample_std([1.0, 2.0, 4.0]) == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert metrics.sample_std([[1.0, 10.0], [3.0, 10.0]]).tolist() == pytest.approx([2**0.5, 0.0])
    assert metrics.sample_std([0.7]) == 0.0
