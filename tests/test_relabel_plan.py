"""Tests for the cross-fitting plan of ``relabel-review flag``: folds and epochs by dataset size."""

from __future__ import annotations

import pytest

from fercurate.relabel.flag import (
    CROSS_FIT,
    DEFAULT_FOLDS,
    CrossFitPlan,
    cross_fit_epochs,
    cross_fit_folds,
    fit_rows,
)
from fercurate.train import PRESETS

VAL = 0.0  # FlagParams.val_fraction: no early-stopping hold-out


def plan_for(rows: int, plan: CrossFitPlan) -> tuple[int, int]:
    folds = cross_fit_folds(plan, rows, VAL)
    return folds, cross_fit_epochs(plan, 99, fit_rows(rows, folds, VAL), folds)


@pytest.mark.parametrize("preset", sorted(CROSS_FIT))
def test_plan_scales_folds_down_and_keeps_work_bounded(preset: str) -> None:
    plan = CROSS_FIT[preset]
    sizes = [500, 3_000, 8_000, 20_000, 60_000, 200_000]
    folds = [cross_fit_folds(plan, n, VAL) for n in sizes]
    assert folds == sorted(folds, reverse=True)  # more rows never mean more folds
    assert folds[0] == plan.folds[1] and folds[-1] == plan.folds[0]
    for n, k in zip(sizes, folds, strict=True):
        epochs = cross_fit_epochs(plan, PRESETS[preset].epochs, fit_rows(n, k, VAL), k)
        ceiling = plan.max_epochs or PRESETS[preset].epochs
        assert plan.min_epochs <= epochs <= ceiling
        work = k * epochs * fit_rows(n, k, VAL)
        if epochs > plan.min_epochs:  # the budget, not the floor, set the epochs
            assert work <= plan.samples * 1.1


def test_cpu_plan_on_a_real_sized_and_a_demo_sized_set() -> None:
    plan = CROSS_FIT["cpu"]
    # ~18.7K images (real 4-class FER2013 after dedup): the fewest folds, so that each model still
    # gets the full schedule it needs (4 folds would leave each about 7 epochs)
    folds, epochs = plan_for(18_700, plan)
    assert folds == plan.folds[0] and plan.full_epochs <= epochs <= plan.max_epochs
    # the 3K demo: the most folds (each model sees 80% of the rows) and a full schedule
    assert plan_for(3_000, plan) == (plan.folds[1], plan.max_epochs)


def test_fold_choice_is_the_largest_that_keeps_full_epochs() -> None:
    plan = CrossFitPlan(samples=100_000, full_epochs=10, min_epochs=2, max_epochs=50, folds=(2, 6))
    for rows in (1_000, 2_500, 4_000, 7_000, 30_000):
        k = cross_fit_folds(plan, rows, VAL)
        assert 2 <= k <= 6
        if k < 6:  # one more fold would have cut each model below full_epochs
            assert plan.samples / ((k + 1) * fit_rows(rows, k + 1, VAL)) < plan.full_epochs
        if k > 2:
            assert plan.samples / (k * fit_rows(rows, k, VAL)) >= plan.full_epochs


def test_no_plan_keeps_the_preset() -> None:
    assert cross_fit_folds(None, 10_000, VAL) == DEFAULT_FOLDS
    assert cross_fit_epochs(None, 7, 10_000, 5) == 7


def test_a_small_set_trains_with_smaller_batches_and_more_epochs() -> None:
    """At the preset's batch a demo-sized fold is 16 steps an epoch: the batch halves until an
    epoch has ``min_steps``, the rate follows it down (to the demo's 2e-3 at 32), and the ceiling on
    epochs rises. A real-sized set keeps the preset's batch, the plan's rate and its epochs."""
    from fercurate.relabel.flag import cross_fit_batch, cross_fit_config
    from fercurate.train import make_config

    plan = CROSS_FIT["cpu"]
    preset = make_config("cpu", **plan.overrides)  # as flag makes it
    real = cross_fit_config(plan, preset, fit_rows(18_700, 3, VAL), 3)
    assert (real.batch_size, real.lr, real.epochs) == (preset.batch_size, 5e-3, plan.max_epochs)
    demo = cross_fit_config(plan, preset, fit_rows(3_000, 3, VAL), 3)
    assert demo.batch_size == plan.small_batch and demo.epochs == plan.small_max_epochs
    assert demo.lr == pytest.approx(2e-3, rel=0.02)
    assert 3 * demo.epochs * fit_rows(3_000, 3, VAL) <= plan.samples  # still far inside the budget
    # in between: halved only as far as needed; an explicit --epochs wins
    assert cross_fit_batch(plan, 128, 5_000) == 64 and cross_fit_batch(plan, 128, 9_000) == 128
    assert cross_fit_config(plan, preset, 2_000, 3, epochs=5).epochs == 5
    for rows in (300, 2_000, 5_000, 9_000, 40_000):
        batch = cross_fit_batch(plan, 128, rows)
        assert batch == 32 or rows / batch >= plan.min_steps
