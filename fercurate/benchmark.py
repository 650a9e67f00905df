"""``fercurate benchmark``: train the built-in CNN on each curated version and measure the effect.

The honest comparison needs one test set that no version's training has seen. The **gold set** is:

* the active rows in the newest compared version's ``test`` split, from the original source,
* minus every row that has a duplicate (exact, or near as verified by the dedup machinery) among
  the train or val rows of any compared version, other than the row itself.

A compared version may hold a gold image itself in its train or val split (an old version whose
lopsided split put it there): those rows are held out of that version's training and validation,
and the report says how many. Everything else about each version is used as it is, leakage included,
so its own validation accuracy can be compared with its gold accuracy: the difference is the
*leakage inflation* ("Model 0 reached 76% on the original data").

Models are cached under ``cache/models/`` by the content of their training and validation rows,
the training config and the seed, so re-running (or comparing a version whose training data did not
change, such as a flag-only version) trains nothing new.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, SOURCE_ORIGINAL, Col, atomic_write, atomic_write_text
from fercurate.progress import NullProgress, Progress
from fercurate.workspace import VersionInfo, Workspace, load_pixels

SMALL_GOLD = 300


@dataclass(frozen=True)
class BenchmarkParams:
    """Options of ``fercurate benchmark`` (the CLI's defaults point here)."""

    versions: tuple[str, ...] = ()  # empty: every version in the lineage of the latest
    seeds: int = 3
    preset: str = "cpu"
    overrides: tuple[tuple[str, Any], ...] = ()
    device: str = "auto"
    n_boot: int = 2000


@dataclass
class VersionScore:
    """Aggregated results of one version over seeds."""

    version: str
    stage: str
    n_train: int
    n_val: int
    n_test: int
    held_out: int
    gold_acc_mean: float
    gold_acc_std: float
    gold_f1_mean: float
    gold_f1_std: float
    test_acc_mean: float | None
    val_acc_mean: float
    train_acc_mean: float
    train_val_gap: float
    leakage_inflation: float
    delta_vs_previous: float | None = None
    delta_ci: tuple[float, float] | None = None
    per_class_f1: dict[str, float] = field(default_factory=dict)
    confusion: list[list[float]] = field(default_factory=list)
    same_data_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["delta_ci"] = list(self.delta_ci) if self.delta_ci else None
        return out


@dataclass
class BenchmarkResult:
    """What a benchmark run measured, and where its report is."""

    versions: list[VersionScore]
    gold_size: int
    gold_by_class: dict[str, int]
    gold_excluded: int
    classes: list[str]
    preset: str
    seeds: int
    device: str
    warnings: list[str]
    report_dir: Path
    runs: pd.DataFrame
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "gold_size": self.gold_size,
            "gold_by_class": self.gold_by_class,
            "gold_excluded_as_leaky": self.gold_excluded,
            "classes": self.classes,
            "preset": self.preset,
            "seeds": self.seeds,
            "device": self.device,
            "warnings": self.warnings,
            "report_dir": str(self.report_dir),
            "report_md": str(self.report_dir / "report.md"),
            "report_html": str(self.report_dir / "report.html"),
            "versions": [v.to_dict() for v in self.versions],
            "seconds": round(self.seconds, 1),
        }


# -- the stage -------------------------------------------------------------------------------------
def benchmark(workspace: Workspace, params: BenchmarkParams, progress: Progress | None = None) -> BenchmarkResult:
    """Train and evaluate the built-in CNN on each chosen version.

    Raises:
        WorkspaceError: unknown version.
        InputError: a split with no rows, a class missing from a version's train split, bad options.
        DeviceError: ``--device cuda`` without CUDA.
    """
    from fercurate.train import classification_metrics, config_hash, make_config, resolve_device

    progress = progress or NullProgress()
    started = time.perf_counter()
    if params.seeds < 1:
        raise InputError(f"--seeds {params.seeds} must be at least 1")
    device = resolve_device(params.device)  # fail before any work
    base_config = make_config(params.preset, device=params.device, **dict(params.overrides))

    infos = _chosen_versions(workspace, params.versions)
    frames = {info.version: workspace.read(info.version)[1] for info in infos}
    newest = infos[-1]
    classes = sorted(frames[newest.version].loc[lambda d: d[Col.STATUS] == ACTIVE, Col.LABEL].unique().tolist())

    # -- the gold set ---------------------------------------------------------------------------
    progress.start("Building the gold test set", None)
    gold, excluded = _gold_set(workspace, infos, frames)
    warnings = []
    if len(gold) < SMALL_GOLD:
        warnings.append(
            f"the gold test set has only {len(gold)} images (< {SMALL_GOLD}): differences of a few points are "
            "noise; run `fercurate split` on a larger dataset or with a bigger test ratio"
        )
    if gold.empty:
        raise InputError(
            f"no gold test images: {newest.version}'s test split has no original rows free of duplicates in the "
            "compared versions' train/val; run `fercurate split` first (it creates a real test split)"
        )
    gold_pixels = load_pixels(workspace, newest, gold)
    gold_y = _encode(gold[Col.LABEL], classes, newest.version, "gold")
    gold_ids = set(gold[Col.IMAGE_ID])

    # -- train and evaluate ---------------------------------------------------------------------
    runs: list[dict[str, Any]] = []
    gold_correct: dict[str, np.ndarray] = {}
    gold_pred_counts: dict[str, np.ndarray] = {}
    first_with_key: dict[str, str] = {}  # data key -> the first version trained on exactly that data
    scores: list[VersionScore] = []
    for info in infos:
        df = frames[info.version]
        act = df[df[Col.STATUS] == ACTIVE]
        leaked = act[Col.IMAGE_ID].isin(gold_ids)
        tr = act[(act[Col.SPLIT] == "train") & ~leaked]
        va = act[(act[Col.SPLIT] == "val") & ~leaked]
        te = act[act[Col.SPLIT] == "test"]
        held_out = int((leaked & act[Col.SPLIT].isin(["train", "val"])).sum())
        for name, part in (("train", tr), ("val", va)):
            if part.empty:
                raise InputError(
                    f"version {info.version} has no {name} rows to train with; run `fercurate split` or pass "
                    "other versions"
                )
        missing = sorted(set(classes) - set(tr[Col.LABEL]))
        if missing:
            raise InputError(
                f"class(es) {', '.join(missing)} have no rows in {info.version}'s train split; "
                "compare versions that share the classes"
            )
        y_tr = _encode(tr[Col.LABEL], classes, info.version, "train")
        y_va = _encode(va[Col.LABEL], classes, info.version, "val")
        data_key = _data_key(tr, va)
        same_as = first_with_key.setdefault(data_key, info.version)
        x_tr = load_pixels(workspace, info, tr)
        x_va = load_pixels(workspace, info, va)
        x_te = load_pixels(workspace, info, te) if not te.empty else None
        y_te = _encode(te[Col.LABEL], classes, info.version, "test") if not te.empty else None
        per_seed = []
        for seed in range(params.seeds):
            config = _replace(base_config, seed=seed)
            model, val_acc, epochs = _trained_model(
                workspace,
                config,
                config_hash(config),
                data_key,
                x_tr,
                y_tr,
                x_va,
                y_va,
                classes,
                progress,
                f"{info.version} seed {seed}",
            )
            gold_pred = _predict(model, gold_pixels, device)
            train_acc = float((_predict(model, x_tr, device) == y_tr).mean())
            test_acc = float((_predict(model, x_te, device) == y_te).mean()) if x_te is not None else None
            metrics = classification_metrics(gold_y, gold_pred, classes)
            per_seed.append((gold_pred, metrics))
            runs.append(
                {
                    "version": info.version,
                    "stage": info.stage,
                    "seed": seed,
                    "data_key": data_key,
                    "gold_acc": metrics.accuracy,
                    "gold_macro_f1": metrics.macro_f1,
                    "test_acc": test_acc,
                    "val_acc": val_acc,
                    "train_acc": train_acc,
                    "epochs": epochs,
                    "n_train": len(tr),
                    "n_val": len(va),
                    "n_test": len(te),
                }
            )
        correct = np.stack([p == gold_y for p, _ in per_seed]).mean(axis=0)
        gold_correct[info.version] = correct
        gold_pred_counts[info.version] = _confusion_mean([p for p, _ in per_seed], gold_y, len(classes))
        mine = [r for r in runs if r["version"] == info.version]
        score = VersionScore(
            version=info.version,
            stage=info.stage,
            n_train=len(tr),
            n_val=len(va),
            n_test=len(te),
            held_out=held_out,
            gold_acc_mean=float(np.mean([r["gold_acc"] for r in mine])),
            gold_acc_std=float(np.std([r["gold_acc"] for r in mine])),
            gold_f1_mean=float(np.mean([r["gold_macro_f1"] for r in mine])),
            gold_f1_std=float(np.std([r["gold_macro_f1"] for r in mine])),
            test_acc_mean=float(np.mean([r["test_acc"] for r in mine])) if mine[0]["test_acc"] is not None else None,
            val_acc_mean=float(np.mean([r["val_acc"] for r in mine])),
            train_acc_mean=float(np.mean([r["train_acc"] for r in mine])),
            train_val_gap=float(np.mean([r["train_acc"] - r["val_acc"] for r in mine])),
            leakage_inflation=float(np.mean([r["val_acc"] - r["gold_acc"] for r in mine])),
            per_class_f1={c: float(np.mean([m.per_class[c]["f1"] for _, m in per_seed])) for c in classes},
            confusion=gold_pred_counts[info.version].tolist(),
            same_data_as=same_as if same_as != info.version else None,
        )
        if scores:
            delta, lo, hi = bootstrap_delta(gold_correct[scores[-1].version], correct, params.n_boot)
            score.delta_vs_previous, score.delta_ci = delta, (lo, hi)
        scores.append(score)

    runs_df = pd.DataFrame(runs)
    out_dir = workspace.reports_dir / "benchmark" / f"{newest.version}-{params.preset}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BenchmarkResult(
        versions=scores,
        gold_size=len(gold),
        gold_by_class={str(k): int(v) for k, v in gold[Col.LABEL].value_counts().sort_index().items()},
        gold_excluded=excluded,
        classes=classes,
        preset=params.preset,
        seeds=params.seeds,
        device=str(device),
        warnings=warnings,
        report_dir=out_dir,
        runs=runs_df,
        seconds=time.perf_counter() - started,
    )
    _write_reports(result, gold.assign(**{f"correct_{k}": v for k, v in gold_correct.items()}))
    return result


# -- pieces ----------------------------------------------------------------------------------------
def _chosen_versions(workspace: Workspace, specs: tuple[str, ...]) -> list[VersionInfo]:
    if specs:
        infos = [workspace.resolve(s) for s in specs]
        return sorted({i.version: i for i in infos}.values(), key=lambda i: i.version)
    return workspace.lineage()


def _gold_set(
    workspace: Workspace, infos: list[VersionInfo], frames: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, int]:
    """The gold rows and how many candidates were dropped for having a duplicate in some train/val."""
    from fercurate.dedup import match_against

    newest = frames[infos[-1].version]
    candidates = newest[
        (newest[Col.STATUS] == ACTIVE) & (newest[Col.SPLIT] == "test") & (newest[Col.SOURCE] == SOURCE_ORIGINAL)
    ].reset_index(drop=True)
    if candidates.empty:
        return candidates, 0
    reference = pd.concat(
        [f[(f[Col.STATUS] == ACTIVE) & f[Col.SPLIT].isin(["train", "val"])] for f in frames.values()]
    ).drop_duplicates(Col.IMAGE_ID)
    # a candidate's own row in an old version's train is held out there, not a duplicate; another file
    # with the same bytes is a duplicate like any other
    reference = reference[~reference[Col.IMAGE_ID].isin(set(candidates[Col.IMAGE_ID]))]
    leaky = np.zeros(len(candidates), dtype=bool)
    if not reference.empty:
        q = load_pixels(workspace, infos[-1], candidates)
        r = load_pixels(workspace, infos[-1], reference.reset_index(drop=True))
        matches = match_against(q, r)
        leaky[matches["query"].to_numpy(dtype=int)] = True
    # duplicates inside the gold set itself would double-count one photo: keep one per dup_group
    gold = candidates[~leaky]
    if Col.DUP_GROUP in gold.columns:
        grouped = gold[gold[Col.DUP_GROUP].notna()]
        keep = grouped.sort_values(Col.IMAGE_ID).drop_duplicates(Col.DUP_GROUP).index
        gold = gold[gold[Col.DUP_GROUP].isna() | gold.index.isin(keep)]
    return gold.reset_index(drop=True), int(leaky.sum())


def _encode(labels: pd.Series, classes: list[str], version: str, split: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise InputError(
            f"{version}'s {split} split has class(es) {', '.join(unknown)} that the newest version lacks "
            f"({', '.join(classes)}); compare versions that share the classes"
        )
    return labels.map(index).to_numpy(dtype=np.int64)


def _data_key(train: pd.DataFrame, val: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for part in (train, val):
        rows = part[[Col.SHA256, Col.LABEL]].sort_values([Col.SHA256, Col.LABEL])
        h.update("\n".join(rows[Col.SHA256] + ":" + rows[Col.LABEL]).encode())
        h.update(b"|")
    return h.hexdigest()[:20]


def _replace(config: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _trained_model(
    workspace: Workspace,
    config: Any,
    cfg_hash: str,
    data_key: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    classes: list[str],
    progress: Progress,
    label: str,
) -> tuple[Any, float, int]:
    """A model for (data, config, seed): loaded from the cache, or trained and cached."""
    from fercurate.train import ArraySplit, load_checkpoint, save_checkpoint, train

    path = workspace.cache_dir / "models" / f"{data_key}-{cfg_hash}-s{config.seed}.pt"
    if path.exists():
        cached = load_checkpoint(path, device=config.device if config.device != "auto" else "cpu")
        return cached.model, float(cached.best_metric), int(cached.best_epoch)
    progress.start(f"Training {label}", config.epochs)
    result = train(
        config, ArraySplit(x_tr, y_tr), ArraySplit(x_va, y_va), classes, progress=lambda _e: progress.advance(1)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result, path)
    best = result.history[result.best_epoch - 1]
    return result.model, float(best["val_acc"]), int(result.best_epoch)


def _predict(model: Any, x: np.ndarray | None, device: Any) -> np.ndarray:
    from fercurate.train import predict_proba

    if x is None or len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    return predict_proba(model, x, device=device).argmax(axis=1)


def _confusion_mean(preds: list[np.ndarray], y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, k))
    for p in preds:
        np.add.at(out, (y, p), 1)
    return out / len(preds)


def bootstrap_delta(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired test items, with a 95% percentile bootstrap interval.

    ``a`` and ``b`` are per-item correctness averaged over seeds (values in [0, 1]); items are
    resampled jointly, so the interval reflects only how the two versions' models disagree.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound memory at 256 x n
        stop = min(n_boot, start + 256)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


# -- reports ---------------------------------------------------------------------------------------
def _write_reports(result: BenchmarkResult, gold: pd.DataFrame) -> None:
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
    """One display row per version (shared by the Markdown, HTML and terminal renderings)."""
    rows = []
    for v in result.versions:
        ci = f" [{v.delta_ci[0] * 100:+.1f}, {v.delta_ci[1] * 100:+.1f}]" if v.delta_ci else ""
        rows.append(
            {
                "version": v.version,
                "stage": v.stage,
                "train/val/test": f"{v.n_train}/{v.n_val}/{v.n_test}",
                "gold acc": f"{v.gold_acc_mean * 100:.1f} ± {v.gold_acc_std * 100:.1f}",
                "gold macro-F1": f"{v.gold_f1_mean * 100:.1f} ± {v.gold_f1_std * 100:.1f}",
                "own test acc": "-" if v.test_acc_mean is None else f"{v.test_acc_mean * 100:.1f}",
                "val acc": f"{v.val_acc_mean * 100:.1f}",
                "train-val gap": f"{v.train_val_gap * 100:+.1f}",
                "inflation": f"{v.leakage_inflation * 100:+.1f}",
                "Δ gold vs prev (95% CI)": "-"
                if v.delta_vs_previous is None
                else f"{v.delta_vs_previous * 100:+.1f}{ci}",
            }
        )
    return rows


def render_markdown(result: BenchmarkResult) -> str:
    rows = summary_rows(result)
    header = list(rows[0].keys())
    lines = [
        "# fercurate benchmark",
        "",
        f"Preset `{result.preset}`, {result.seeds} seed(s), device `{result.device}`. Gold test set: "
        f"{result.gold_size} images ({', '.join(f'{k} {v}' for k, v in result.gold_by_class.items())}); "
        f"{result.gold_excluded} test images left out of it for having a duplicate in some train/val split.",
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plot_accuracy(result: BenchmarkResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{v.version}\n{v.stage}" for v in result.versions]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 4))
    gold = [v.gold_acc_mean * 100 for v in result.versions]
    err = [1.96 * v.gold_acc_std * 100 / max(1, np.sqrt(result.seeds)) for v in result.versions]
    ax.bar(x - 0.2, gold, 0.4, yerr=err, capsize=4, label="gold test (mean, 95% CI over seeds)", color="#1f77b4")
    ax.bar(x + 0.2, [v.val_acc_mean * 100 for v in result.versions], 0.4, label="own validation", color="#ff7f0e")
    ax.set_xticks(x, names)
    ax.set_ylabel("accuracy (%)")
    low = min(gold + [v.val_acc_mean * 100 for v in result.versions])
    ax.set_ylim(max(0, low - 15), 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Accuracy by version: gold (honest) vs own validation")
    return _figure_png(fig)


def _plot_f1(result: BenchmarkResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(result.versions)), 4))
    width = 0.8 / max(1, len(result.classes))
    x = np.arange(len(result.versions))
    for i, cls in enumerate(result.classes):
        ax.bar(x + i * width - 0.4 + width / 2, [v.per_class_f1[cls] * 100 for v in result.versions], width, label=cls)
    ax.set_xticks(x, [v.version for v in result.versions])
    ax.set_ylabel("gold F1 (%)")
    ax.legend(fontsize=8, ncol=len(result.classes))
    ax.set_title("Per-class F1 on the gold set")
    return _figure_png(fig)


def _plot_confusions(result: BenchmarkResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.versions)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
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
