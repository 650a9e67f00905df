"""Confident learning on hand-built probability matrices (no torch, no training)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fercurate.errors import InputError
from fercurate.relabel import scoring
from fercurate.relabel.flag import FlagParams
from fercurate.relabel.queue import BUDGET_CAP, BUDGET_MIN, default_budget
from fercurate.relabel.scoring import (
    FILTERS,
    RANKERS,
    NormalizedMargin,
    argmax_is_given,
    blend_fit,
    confident_joint,
    confident_thresholds,
    estimate_noise,
    expected_precision,
    fit_temperature,
    score_labels,
    temperature_scale,
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


@settings(max_examples=40, deadline=None)
@given(noisy_problems())
def test_flags_default_filter_takes_every_disagreement_and_ranks_as_the_others(
    problem: tuple[np.ndarray, np.ndarray],
) -> None:
    probs, labels = problem
    default = score_labels(probs, labels, method="normalized_margin", filter_by=FlagParams.filter_by)
    assert FlagParams.filter_by == "predicted_neq_given"
    assert default.flagged.tolist() == (probs.argmax(axis=1) != labels).tolist()
    # every other filter flags a subset, ranked in the same order: the top of the queue is shared
    for filter_by in FILTERS:
        other = score_labels(probs, labels, method="normalized_margin", filter_by=filter_by)
        assert not (other.flagged & ~default.flagged).any()
        assert np.array_equal(other.score, default.score)
        ranked = default.ranked()
        assert other.ranked().tolist() == ranked[other.flagged[ranked]].tolist()


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


# -- how many are wrong, and how sure each flag is -------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(noisy_problems())
def test_estimated_joint_and_wrong_count_match_cleanlab(problem: tuple[np.ndarray, np.ndarray]) -> None:
    count = pytest.importorskip("cleanlab.count", reason="cleanlab (a test extra) is not installed")
    probs, labels = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = count.estimate_joint(labels, probs) * len(labels)
        n_issues = count.num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    scores = score_labels(probs, labels)
    noise = estimate_noise(probs, labels, scores)
    assert np.allclose(noise.joint, joint, atol=1e-6)
    assert noise.wrong_total == n_issues
    classes = [f"c{i}" for i in range(probs.shape[1])]
    assert sum(noise.wrong_by_pair(classes).values()) == noise.wrong_total
    assert ((noise.p_wrong >= 0) & (noise.p_wrong <= 1 + 1e-9)).all()


def test_fit_temperature_undoes_an_over_confident_model() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 4)) * 2.0
    truth = temperature_scale(np.exp(logits), 1.0)
    labels = (truth.cumsum(axis=1) > rng.random((4000, 1))).argmax(axis=1)
    over_confident = temperature_scale(truth, 0.5)  # logits doubled
    assert fit_temperature(over_confident, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(truth, labels) == pytest.approx(1.0, rel=0.1)


def test_expected_precision_is_the_running_mean() -> None:
    assert expected_precision(np.array([1.0, 0.5, 0.0])).tolist() == [1.0, 0.75, 0.5]
    assert expected_precision(np.array([])).tolist() == []


def simulated_noisy_dataset(seed: int, n: int = 20000, k: int = 4, noise: float = 0.15) -> dict[str, np.ndarray]:
    """Ambiguous images (a true-class posterior per image), class-conditional label noise, and an
    over-confident model of the given labels: the setting the estimates assume, with the truth known."""
    rng = np.random.default_rng(seed)
    p_true = temperature_scale(np.exp(rng.normal(size=(n, k)) * 2.5), 1.0)
    true = (p_true.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    flipped = rng.random(n) < noise
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, k, int(flipped.sum()))) % k
    channel = np.full((k, k), noise / (k - 1))
    np.fill_diagonal(channel, 1 - noise)
    model = temperature_scale(p_true @ channel.T, 0.5)
    return {"probs": model, "given": given, "true": true, "channel": channel}


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_precision_tracks_the_measured_precision_on_a_simulated_dataset(seed: int) -> None:
    data = simulated_noisy_dataset(seed)
    scores = score_labels(data["probs"], data["given"])
    noise = estimate_noise(data["probs"], data["given"], scores)
    order = scores.ranked()
    wrong = (data["given"] != data["true"])[order]
    estimated = expected_precision(noise.p_wrong[order])
    measured = np.cumsum(wrong) / np.arange(1, len(order) + 1)
    # the anchor-point channel recovers the simulated one (anchors are not perfectly pure)
    assert np.abs(noise.channel - data["channel"]).max() < 0.07
    # never above the truth by more than binomial noise (about 0.01 at k = 2000, 0.03 at k = 100),
    # and below it by at most 0.2: the estimate errs low by design, calibrated against given labels
    # of which 15% are wrong here (a right prediction on a wrongly labelled row counts as a miss)
    for k in (100, 500, 1000, 2000, len(order)):
        gap = estimated[k - 1] - measured[k - 1]
        assert -0.2 < gap < 0.03, (k, gap)
    n_wrong = int((data["given"] != data["true"]).sum())
    assert 0.75 * n_wrong < noise.expected_wrong < 1.1 * n_wrong
    # noise that strikes every face of a class alike: the anchors stay near the clearest faces
    assert noise.anchor_share <= 0.05
    # what --auto-accept 0.8 would take is right at least as often as estimated (within noise)
    take = scores.flagged & (noise.p_suggested >= 0.8)
    right = data["true"][take] == scores.suggested[take]
    assert take.sum() > 100 and right.mean() >= noise.p_suggested[take].mean() - 0.03


def annotated_dataset(seed: int, n: int = 20000, k: int = 4) -> dict[str, np.ndarray]:
    """Each face has a distribution of how annotators file it; the truth is its majority class, the
    given label one annotator's draw, so wrong labels fall on ambiguous faces (FER2013's labels
    against FER+'s ten votes). The model learned the annotators' distribution, imperfectly."""
    rng = np.random.default_rng(seed)
    annotators = temperature_scale(np.exp(rng.normal(size=(n, k)) * 2.5), 1.0)
    given = (annotators.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    model = temperature_scale(np.exp(np.log(annotators) + rng.normal(size=(n, k))), 0.7)
    return {"probs": model, "given": given, "true": annotators.argmax(axis=1)}


@pytest.mark.parametrize("seed", [0, 1])
def test_wrong_labels_on_ambiguous_faces_widen_the_anchors(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = annotated_dataset(seed)
    scores = score_labels(data["probs"], data["given"], method="normalized_margin", filter_by="predicted_neq_given")
    noise = estimate_noise(data["probs"], data["given"], scores)
    monkeypatch.setattr(scoring, "ANCHOR_SHARES", (scoring.ANCHOR_SHARE,))
    clearest = estimate_noise(data["probs"], data["given"], scores)
    order = scores.ranked()
    measured = np.cumsum((data["given"] != data["true"])[order]) / np.arange(1, len(order) + 1)
    estimated = expected_precision(noise.p_wrong[order])
    narrow = expected_precision(clearest.p_wrong[order])
    # the clearest 1% of each class's faces are labelled right: they see almost none of the noise
    assert noise.anchor_share > scoring.ANCHOR_SHARE == clearest.anchor_share
    assert clearest.wrong_total > 5 * clearest.expected_wrong
    for k in (100, 500, 1000, 2000):
        assert -0.25 < estimated[k - 1] - measured[k - 1] < 0.03, (k, estimated[k - 1], measured[k - 1])
        assert narrow[k - 1] < measured[k - 1] - 0.5, (k, narrow[k - 1], measured[k - 1])
    # auto-accept keeps the clearest anchors' reading, never above the wider one's p_wrong
    other = scores.suggested != data["given"]
    assert np.all(noise.p_suggested <= clearest.p_suggested + 1e-12)
    assert np.all(noise.p_suggested[other] <= noise.p_wrong[other] + 1e-12)


def test_the_fold_models_fit_caps_what_auto_accept_reads() -> None:
    """A suggestion is no surer than the fold models' fit of it while they trained on the row
    (taught the given label): the fit caps ``p_suggested`` where it was recorded, nothing else."""
    data = annotated_dataset(0)
    scores = score_labels(data["probs"], data["given"], method="normalized_margin", filter_by="predicted_neq_given")
    base = estimate_noise(data["probs"], data["given"], scores)
    rng = np.random.default_rng(3)
    fit = temperature_scale(np.exp(rng.normal(size=data["probs"].shape)), 1.0)
    fit[::3] = np.nan  # rows no fold model trained on
    capped = estimate_noise(data["probs"], data["given"], scores, fit=fit)
    rows = np.arange(len(data["given"]))
    fit_suggested = fit[rows, scores.suggested]
    has = ~np.isnan(fit_suggested)
    assert np.array_equal(capped.p_suggested[~has], base.p_suggested[~has])
    assert np.allclose(capped.p_suggested[has], np.minimum(base.p_suggested, fit_suggested)[has])
    assert (capped.p_suggested[has] < base.p_suggested[has]).sum() > 100  # it does cap
    assert np.array_equal(capped.p_wrong, base.p_wrong) and capped.anchor_share == base.anchor_share
    # a fit that fully agrees with every suggestion changes nothing
    agree = np.eye(data["probs"].shape[1])[scores.suggested]
    assert np.array_equal(estimate_noise(data["probs"], data["given"], scores, fit=agree).p_suggested, base.p_suggested)


def test_a_weaker_model_keeps_the_clearest_anchors() -> None:
    """The same faces, a model that has learned them less well: its joint counts its own doubt as
    noise, so however far it is from the anchors' count, the anchors do not widen."""
    data = annotated_dataset(0)
    rng = np.random.default_rng(5)
    weak = temperature_scale(np.exp(np.log(data["probs"]) + rng.normal(size=data["probs"].shape) * 3.0), 1.0)
    scores = score_labels(weak, data["given"])
    noise = estimate_noise(weak, data["given"], scores)
    assert scoring.model_skill(weak, data["given"]) < 1.0
    assert noise.wrong_total > 5 * noise.expected_wrong  # the joint and the anchors far apart ...
    assert noise.anchor_share == scoring.ANCHOR_SHARE  # ... and still the clearest faces


def test_default_budget_is_the_estimate_capped_by_precision_and_size_with_a_floor() -> None:
    falling = np.linspace(0.9, 0.1, 5000)  # expected precision of the top k: at least 0.5 up to k = 2500
    # the estimate when nothing else binds
    assert default_budget(400, falling) == 400
    # the size cap (1000 < 2500), then the precision cap (0.5 is reached at k = 400 of 800)
    assert default_budget(3000, falling) == BUDGET_CAP == 1000
    assert default_budget(3000, np.linspace(0.9, 0.1, 800)) == 400
    # a pessimistic estimate (every rank under 0.5: real faces) still gets the floor ...
    assert default_budget(3175, np.full(4800, 0.3)) == BUDGET_MIN == 100
    # ... and so does a tiny estimate, but never more than the flags there are
    assert default_budget(5, np.full(4800, 0.9)) == BUDGET_MIN
    assert default_budget(3000, np.full(40, 0.3)) == 40


def test_rank_probs_reorder_the_flags_and_change_nothing_else() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    base = score_labels(probs, labels, method="normalized_margin", filter_by="predicted_neq_given")
    other = rng.dirichlet(np.ones(3), 300)
    ranked = score_labels(probs, labels, method="normalized_margin", filter_by="predicted_neq_given", rank_probs=other)
    for field in ("thresholds", "joint", "suggested", "flagged"):
        assert np.array_equal(getattr(base, field), getattr(ranked, field))
    np.testing.assert_allclose(ranked.score, 1.0 - NormalizedMargin()(other, labels))
    assert not np.array_equal(base.ranked(), ranked.ranked()) and set(base.ranked()) == set(ranked.ranked())
    with pytest.raises(InputError, match=r"rank_probs has shape \(300, 2\)"):
        score_labels(probs, labels, rank_probs=other[:, :2])


def test_blend_fit_weighs_the_fit_in_and_falls_back_where_there_is_none() -> None:
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    fit = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]])
    np.testing.assert_allclose(blend_fit(probs, fit, 0.5), [[0.8, 0.2], [0.2, 0.8], [0.25, 0.75]])
    np.testing.assert_allclose(blend_fit(probs, fit, 0.0), probs)
