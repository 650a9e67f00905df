"""The benchmark report: the summary table (also the CLI's), report.md, report.html with plots, runs, gold set."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fercurate.manifest import Col, atomic_write, atomic_write_text
from fercurate.reports import ONE_SEED, figure_png, new_figure, wrap_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fercurate.benchmark.stage import BenchmarkResult


# -- reports ---------------------------------------------------------------------------------------
def write_reports(result: BenchmarkResult, gold: pd.DataFrame) -> None:
    out = result.report_dir
    atomic_write(out / "runs.parquet", lambda tmp: result.runs.to_parquet(tmp, index=False))
    summary = pd.DataFrame([v.to_dict() for v in result.versions]).drop(columns=["confusion", "per_class_f1"])
    summary["delta_ci"] = summary["delta_ci"].map(lambda v: json.dumps(v) if v is not None else None)
    atomic_write(out / "summary.parquet", lambda tmp: summary.to_parquet(tmp, index=False))
    keep = [Col.IMAGE_ID, Col.PATH, Col.LABEL, *[c for c in gold.columns if c.startswith("correct_")]]
    atomic_write(out / "gold.parquet", lambda tmp: gold[keep].to_parquet(tmp, index=False))
    atomic_write_text(out / "result.json", json.dumps(result.to_dict(), indent=2, default=str))
    plots = {
        "accuracy.png": _plot_accuracy(result),
        "confusion.png": _plot_confusions(result),
        "per_class_f1.png": _plot_f1(result),
    }
    for name, png in plots.items():
        atomic_write(out / name, lambda tmp, png=png: Path(tmp).write_bytes(png))
    md = render_markdown(result)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _render_html(result, plots))


def summary_rows(result: BenchmarkResult) -> list[dict[str, str]]:
    """One display row per version (shared by the Markdown, HTML and terminal renderings).

    Gold scores read "mean ± standard deviation over seeds"; with one seed there is no spread, and the
    column heading says "one seed, no interval" rather than printing a certain-looking "± 0.0".
    """
    rows = []
    one_seed = any(v.gold_acc_std is None for v in result.versions)  # one heading for every row
    for v in result.versions:
        ci = f" [{v.delta_ci[0] * 100:+.1f}, {v.delta_ci[1] * 100:+.1f}]" if v.delta_ci else ""
        rows.append(
            {
                "version": v.version,
                "stage": v.stage,
                "train/val/test": f"{v.n_train}/{v.n_val}/{v.n_test}",
                f"gold acc ({ONE_SEED})" if one_seed else "gold acc": _mean_sd(v.gold_acc_mean, v.gold_acc_std),
                f"gold macro-F1 ({ONE_SEED})" if one_seed else "gold macro-F1": _mean_sd(v.gold_f1_mean, v.gold_f1_std),
                "own test acc": "-" if v.test_acc_mean is None else f"{v.test_acc_mean * 100:.1f}",
                "val acc": f"{v.val_acc_mean * 100:.1f}",
                "train-val gap": f"{v.train_val_gap * 100:+.1f}",
                "inflation": f"{v.leakage_inflation * 100:+.1f}",
                # a paired bootstrap over gold images: an interval even with one seed
                "Δ gold vs prev (95% CI)": "-"
                if v.delta_vs_previous is None
                else f"{v.delta_vs_previous * 100:+.1f}{ci}",
            }
        )
    return rows


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean * 100:.1f}" if sd is None else f"{mean * 100:.1f} ± {sd * 100:.1f}"


def render_markdown(result: BenchmarkResult) -> str:
    rows = summary_rows(result)
    header = list(rows[0].keys())
    lines = [
        "# fercurate benchmark",
        "",
        f"Preset `{result.preset}`, {result.seeds} seed(s), device `{result.device}`. Gold test set: "
        f"{result.gold_size} images ({', '.join(f'{k} {v}' for k, v in result.gold_by_class.items())}); "
        f"{result.gold_excluded} test images left out of it for having a duplicate in some train/val split "
        f"(looked for with {result.gold_matched_as}).",
        "",
        "Accuracies in %. *inflation* = the version's own validation accuracy minus its gold accuracy: "
        "how much its own numbers overstate what the model does on unseen images.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r[h] for h in header) + " |" for r in rows],
        "",
    ]
    for w in result.warnings:
        lines.append(f"> warning: {w}")
    held = [v for v in result.versions if v.held_out]
    if held:
        lines.append("")
        lines.append(
            "Gold images held out of older versions' train/val: " + ", ".join(f"{v.version} {v.held_out}" for v in held)
        )
    lines += [
        "",
        "![accuracy](accuracy.png)",
        "",
        "![per-class F1](per_class_f1.png)",
        "",
        "![confusion](confusion.png)",
    ]
    return "\n".join(lines) + "\n"


def _render_html(result: BenchmarkResult, plots: dict[str, bytes]) -> str:
    rows = summary_rows(result)
    header = list(rows[0].keys())
    table = (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(r[h])}</td>" for h in header) + "</tr>" for r in rows)
        + "</table>"
    )
    images = "".join(
        f'<h2>{html.escape(name[:-4].replace("_", " "))}</h2><img src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        for name, png in plots.items()
    )
    warnings = "".join(f'<p class="warn">warning: {html.escape(w)}</p>' for w in result.warnings)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fercurate benchmark</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}.warn{color:#b00}</style></head><body><h1>fercurate benchmark</h1>"
        f"<p>Preset <code>{result.preset}</code>, {result.seeds} seed(s), device <code>{result.device}</code>; "
        f"gold test set {result.gold_size} images.</p>{warnings}{table}{images}</body></html>"
    )


def _figure_png(fig: Any) -> bytes:
    return figure_png(fig, dpi=110, bbox_inches="tight")


def _plot_accuracy(result: BenchmarkResult) -> bytes:
    return _figure_png(accuracy_figure(result))


def accuracy_figure(result: BenchmarkResult) -> Figure:
    """Gold and own-validation accuracy per version, as grouped bars.

    The y axis starts below the lowest bar (at a multiple of 5), not at 0: versions differ by a few
    points, which a 0-100 axis would flatten; the axis label says where it starts. The legend sits
    above the axes so it covers no bar, and stage names wrap so long ones do not run together.
    """
    names = [f"{v.version}\n{wrap_label(v.stage)}" for v in result.versions]
    x = np.arange(len(names))
    fig = new_figure(max(6.0, 1.6 * len(names)), 4.6)
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    gold = [v.gold_acc_mean * 100 for v in result.versions]
    spreads = [v.gold_acc_std for v in result.versions]
    if any(s is None for s in spreads):
        err, label = None, f"gold test ({ONE_SEED})"
    else:
        err = [1.96 * (s or 0.0) * 100 / np.sqrt(result.seeds) for s in spreads]
        label = f"gold test (mean, 95% CI over {result.seeds} seeds)"
    ax.bar(x - 0.2, gold, 0.4, yerr=err, capsize=4, label=label, color="#1f77b4")
    ax.bar(x + 0.2, [v.val_acc_mean * 100 for v in result.versions], 0.4, label="own validation", color="#ff7f0e")
    ax.set_xticks(x, names)
    low = min(gold + [v.val_acc_mean * 100 for v in result.versions])
    bottom = max(0, int((low - 10) // 5 * 5))
    ax.set_ylim(bottom, 100)
    ax.set_ylabel("accuracy (%)" if bottom == 0 else f"accuracy (%); axis starts at {bottom}%")
    fig.suptitle("Accuracy by version: gold (honest) vs own validation")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return fig


def _plot_f1(result: BenchmarkResult) -> bytes:
    fig = new_figure(max(5, 1.3 * len(result.versions)), 4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(result.classes))
    x = np.arange(len(result.versions))
    for i, cls in enumerate(result.classes):
        ax.bar(x + i * width - 0.4 + width / 2, [v.per_class_f1[cls] * 100 for v in result.versions], width, label=cls)
    ax.set_xticks(x, [v.version for v in result.versions])
    ax.set_ylabel("gold F1 (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, not on them
    ax.set_title("Per-class F1 on the gold set")
    return _figure_png(fig)


def _plot_confusions(result: BenchmarkResult) -> bytes:
    n = len(result.versions)
    fig = new_figure(3.2 * n, 3.2)
    axes = fig.subplots(1, n, squeeze=False)
    for ax, v in zip(axes[0], result.versions, strict=True):
        cm = np.asarray(v.confusion)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (i, j), val in np.ndenumerate(norm):
            ax.text(
                j, i, f"{val * 100:.0f}", ha="center", va="center", fontsize=7, color="black" if val < 0.6 else "white"
            )
        ax.set_xticks(range(len(result.classes)), result.classes, rotation=45, fontsize=7)
        ax.set_yticks(range(len(result.classes)), result.classes, fontsize=7)
        ax.set_title(v.version, fontsize=9)
    axes[0][0].set_ylabel("true (gold)")
    fig.suptitle("Gold-set confusion (row %)", fontsize=10)
    return _figure_png(fig)
