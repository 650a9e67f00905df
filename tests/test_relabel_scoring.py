"""Confident learning on hand-built probability matrices (no torch, no training)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fercurate.errors import InputError
from fercurate.relabel.scoring import (
    FILTERS,
    RANKERS,
    argmax_is_given,
    confident_joint,
    confident_thresholds,
    score_labels,
)


def clean_probs(labels: np.ndarray, k: int, confidence: float = 0.8) -> np.ndarray:
    """Each row puts ``confidence`` on its label and spreads the rest evenly."""
    probs = np.full((len(labels), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_planted_mislabel_is_flagged_ranked_first_and_gets_the_right_suggestion() -> None:
    labels = np.repeat([0, 1, 2], 10)
    probs = clean_probs(labels, 3)
    probs[3] = [0.05, 0.90, 0.05]  # labelled 0, looks like 1: the planted error
    probs[25] = [0.20, 0.30, 0.50]  # labelled 2, unsure but its label wins: not an error
    scores = score_labels(probs, labels)
    assert scores.flagged[3]
    assert scores.ranked()[0] == 3
    assert scores.suggested[3] == 1
    assert not scores.flagged[25]
    assert scores.flagged.sum() == 1
    assert scores.score[3] == pytest.approx(1 - 0.05)


def test_thresholds_are_the_mean_self_confidence_of_each_class() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0]])
    assert confident_thresholds(probs, labels) == pytest.approx([0.7, 0.8])
    # a class no row is labelled with can never be confident
    assert confident_thresholds(probs[:2], labels[:2])[1] == 2.0


def test_confident_joint_counts_rows_by_given_and_confident_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    t = confident_thresholds(probs, labels)  # [0.6, 0.8]
    joint = confident_joint(probs, labels, t, calibrate=False)
    # row 2 (labelled 0, p1=0.9 >= 0.8) sits off the diagonal; row 5 (p1=0.7 < 0.8) is not confident
    assert joint.tolist() == [[2, 1], [0, 2]]
    calibrated = confident_joint(probs, labels, t)
    assert calibrated.sum(axis=1).tolist() == [3, 3]


def test_suggestion_is_the_most_probable_confident_class_not_the_argmax() -> None:
    labels = np.repeat([0, 1, 2], 6)
    probs = clean_probs(labels, 3, confidence=0.9)
    probs[labels == 1] = [0.35, 0.30, 0.35]  # the model is shy about class 1: threshold 0.30
    probs[labels == 2] = [0.02, 0.03, 0.95]  # and sure about class 2: threshold 0.95
    probs[0] = [0.05, 0.40, 0.55]  # class 1 is confident (0.40 >= 0.30), the argmax 2 is not
    probs[1] = [0.50, 0.05, 0.45]  # no class reaches its threshold
    scores = score_labels(probs, labels)
    assert scores.thresholds[1:] == pytest.approx([0.30, 0.95])
    assert scores.suggested[0] == 1
    assert scores.suggested[1] == 0  # falls back to the argmax


def test_normalized_margin_ranks_by_how_far_another_class_beats_the_label() -> None:
    labels = np.array([0, 0])
    probs = np.array([[0.3, 0.7, 0.0], [0.2, 0.4, 0.4]])
    quality = RANKERS["normalized_margin"](probs, labels)
    assert quality == pytest.approx([(0.3 - 0.7 + 1) / 2, (0.2 - 0.4 + 1) / 2])
    # self-confidence says row 1 is worse; the margin says row 0 is
    assert RANKERS["self_confidence"](probs, labels).argmin() == 1
    assert quality.argmin() == 0


def test_bad_inputs_name_what_is_accepted() -> None:
    labels = np.array([0, 1])
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(InputError, match="self_confidence"):
        score_labels(probs, labels, method="entropy")
    with pytest.raises(InputError, match="prune_by_noise_rate"):
        score_labels(probs, labels, filter_by="everything")
    with pytest.raises(InputError, match="class indices"):
        score_labels(probs, np.array([0, 2]))


@st.composite
def noisy_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Random softmax outputs whose argmax agrees with the label more often than chance."""
    k = draw(st.integers(2, 6))
    n = draw(st.integers(k * 3, 120))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(size=(n, k)) * rng.uniform(0.3, 4.0)
    logits[np.arange(n), labels] += rng.uniform(0.0, 3.0)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


@settings(max_examples=60, deadline=None)
@given(noisy_problems(), st.sampled_from(sorted(FILTERS)), st.sampled_from(sorted(RANKERS)))
def test_a_flag_always_has_another_class_beating_the_label(
    problem: tuple[np.ndarray, np.ndarray], filter_by: str, method: str
) -> None:
    probs, labels = problem
    scores = score_labels(probs, labels, method=method, filter_by=filter_by)
    # flagged rows are a subset of the rows the model would label differently ...
    assert not (scores.flagged & argmax_is_given(probs, labels)).any()
    # ... each gets a suggestion other than its label, and the ranking covers exactly the flags
    assert (scores.suggested[scores.flagged] != labels[scores.flagged]).all()
    assert sorted(scores.ranked().tolist()) == np.flatnonzero(scores.flagged).tolist()
    assert ((scores.score >= 0) & (scores.score <= 1)).all()
    # the noise-rate filter flags at most what the confident-learning filter counts per given class
    if filter_by == "prune_by_noise_rate":
        joint = scores.joint
        for c in range(probs.shape[1]):
            assert scores.flagged[labels == c].sum() <= joint[c].sum() - joint[c, c]


@settings(max_examples=60, deadline=None)
@given(noisy_problems(), st.sampled_from(sorted(FILTERS)))
def test_same_flags_and_order_as_cleanlab_on_the_same_probabilities(
    problem: tuple[np.ndarray, np.ndarray], filter_by: str
) -> None:
    filter_mod = pytest.importorskip("cleanlab.filter", reason="cleanlab (a test extra) is not installed")
    probs, labels = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = filter_mod.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
        expected_order = filter_mod.find_label_issues(
            labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
        )
    scores = score_labels(probs, labels, filter_by=filter_by)
    assert scores.flagged.tolist() == expected.tolist()
    # cleanlab sorts with numpy's default (unstable) sort: compare the ranked scores, not tied ids
    assert np.allclose(scores.score[scores.ranked()], scores.score[expected_order])
