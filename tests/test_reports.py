"""The charts keep their legends off the bars and their labels apart; one seed is reported as one seed."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fercurate.benchmark.report import accuracy_figure, render_markdown, summary_rows
from fercurate.benchmark.stage import BenchmarkResult, VersionScore
from fercurate.reports import ONE_SEED, split_figure

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
#: stage names as long as real ones get, and longer
STAGES = [
    "scan",
    "dedup",
    "relabel-review apply with auto-accept",
    "split stratified-group",
    "merge-affectnet",
    "a-stage-name-with-no-spaces-at-all",
]


def synthetic_result(seeds: int, tmp_path: Path) -> BenchmarkResult:
    """A benchmark result with made-up scores: gold accuracy 52-77%, own validation above it."""
    rng = np.random.default_rng(0)
    versions = []
    for i, stage in enumerate(STAGES):
        acc = 0.52 + 0.05 * i
        versions.append(
            VersionScore(
                version=f"v{i:04d}",
                stage=stage,
                n_train=2000,
                n_val=200,
                n_test=200,
                held_out=0,
                gold_acc_mean=acc,
                gold_acc_std=0.01 if seeds > 1 else None,
                gold_f1_mean=acc - 0.05,
                gold_f1_std=0.01 if seeds > 1 else None,
                test_acc_mean=acc + 0.02,
                # the last version's bars are the tallest: where a legend in a corner would land
                val_acc_mean=min(0.99, acc + 0.15),
                train_acc_mean=0.95,
                train_val_gap=0.1,
                leakage_inflation=0.15,
                delta_vs_previous=None if i == 0 else 0.05,
                delta_ci=None if i == 0 else (0.02, 0.08),
                per_class_f1={c: float(rng.uniform(0.3, 0.9)) for c in CLASSES},
                confusion=(np.eye(7) * 20).tolist(),
            )
        )
    return BenchmarkResult(
        versions=versions,
        gold_size=700,
        gold_by_class={c: 100 for c in CLASSES},
        gold_excluded=0,
        gold_matched_as="dedup's defaults",
        classes=CLASSES,
        preset="cpu",
        seeds=seeds,
        device="cpu",
        warnings=[],
        report_dir=tmp_path,
        runs=pd.DataFrame(),
        seconds=1.0,
    )


def drawn(fig):  # type: ignore[no-untyped-def]
    fig.canvas.draw()  # runs the layout engine; extents are final only after a draw
    return fig.canvas.get_renderer()


def assert_apart(boxes: list, what: str) -> None:  # type: ignore[type-arg]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"{what} {i} and {j} overlap: {a} {b}"


@pytest.mark.parametrize("seeds", [1, 3])
def test_accuracy_chart_legend_covers_no_bar_and_labels_do_not_collide(seeds: int, tmp_path: Path) -> None:
    fig = accuracy_figure(synthetic_result(seeds, tmp_path))
    renderer = drawn(fig)
    (ax,) = fig.axes
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 2 * len(STAGES)
    legend = ax.get_legend().get_window_extent(renderer)
    for bar in bars:
        assert not legend.overlaps(bar), f"the legend {legend} covers a bar {bar}"
    # the legend is inside the figure and clear of the title
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)
    assert not legend.overlaps(fig._suptitle.get_window_extent(renderer))
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) == len(STAGES)
    assert_apart([t.get_window_extent(renderer) for t in labels], "x tick labels")


def test_accuracy_chart_says_where_the_y_axis_starts(tmp_path: Path) -> None:
    fig = accuracy_figure(synthetic_result(3, tmp_path))
    (ax,) = fig.axes
    bottom = ax.get_ylim()[0]
    assert 0 < bottom <= 52 - 5
    assert f"axis starts at {bottom:.0f}%" in ax.get_ylabel()


def test_accuracy_chart_legend_names_the_interval_or_its_absence(tmp_path: Path) -> None:
    one = accuracy_figure(synthetic_result(1, tmp_path)).axes[0]
    texts = [t.get_text() for t in one.get_legend().get_texts()]
    assert f"gold test ({ONE_SEED})" in texts and not any("CI" in t for t in texts)
    assert not one.containers[0].errorbar  # no error bars of zero length
    three = accuracy_figure(synthetic_result(3, tmp_path)).axes[0]
    assert "gold test (mean, 95% CI over 3 seeds)" in [t.get_text() for t in three.get_legend().get_texts()]


def test_one_seed_reads_as_one_seed_in_the_table_markdown_and_json(tmp_path: Path) -> None:
    result = synthetic_result(1, tmp_path)
    md = render_markdown(result)
    assert "± 0.0" not in md and "±" not in md
    assert f"gold acc ({ONE_SEED})" in md and "| 52.0 |" in md
    assert f"gold acc ({ONE_SEED})" in summary_rows(result)[0]
    data = json.loads(json.dumps(result.to_dict(), default=str))
    assert data["versions"][0]["gold_acc_std"] is None and data["versions"][0]["gold_f1_std"] is None
    # the change against the previous version is a bootstrap over gold images: it keeps its interval
    assert "+5.0 [+2.0, +8.0]" in md
    several = render_markdown(synthetic_result(3, tmp_path))
    assert "52.0 ± 1.0" in several and ONE_SEED not in several


def test_split_chart_legend_and_labels_stay_clear(tmp_path: Path) -> None:
    classes = [*CLASSES[:-1], "surprise-and-delight"]
    train = np.array([300, 40, 300, 700, 500, 400, 300])
    counts = np.stack([train, train // 10, train // 10], axis=1)
    before = pd.DataFrame(counts, index=classes, columns=["train", "val", "test"])
    before.loc["all"] = before.sum()
    before["total"] = before.sum(axis=1)
    fig = split_figure(before, before, "split v0002 -> v0003")
    renderer = drawn(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend sits on a panel"
        assert_apart([t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()], "class labels")
