"""The benchmark stage as small steps: choose gold, per version its data, per seed train-or-load and
score, compare with the previous version, report. See :mod:`fercurate.benchmark` for the method."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.benchmark.params import SMALL_GOLD, BenchmarkParams
from fercurate.benchmark.report import write_reports
from fercurate.engine import Engine
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, SOURCE_ORIGINAL, Col
from fercurate.progress import NullProgress, Progress
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace, load_pixels


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
    gold_acc_std: float | None  # None with one seed: no spread to show
    gold_f1_mean: float
    gold_f1_std: float | None
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
        return to_dict(self)


@dataclass
class BenchmarkResult:
    """What a benchmark run measured, and where its report is."""

    versions: list[VersionScore]
    gold_size: int
    gold_by_class: dict[str, int]
    gold_excluded: int
    gold_matched_as: str  # whose tolerances found the duplicates the gold set leaves out
    classes: list[str]
    preset: str
    seeds: int
    device: str
    warnings: list[str]
    report_dir: Path
    runs: pd.DataFrame
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return to_dict(
            self,
            drop=("runs",),
            rename={"gold_excluded": "gold_excluded_as_leaky"},
            seconds_digits=1,
            report_md=self.report_dir / "report.md",
            report_html=self.report_dir / "report.html",
        )


# -- the stage -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gold:
    """The gold test set: original test rows of the newest version that no compared version trained on."""

    rows: pd.DataFrame
    excluded: int  # candidates dropped for a duplicate in some version's train/val
    matched_as: str  # the tolerances that looked for those duplicates (see _gold_set)
    pixels: np.ndarray
    y: np.ndarray
    ids: set[str]
    warnings: list[str]


@dataclass(frozen=True)
class VersionData:
    """One version's train / val / test rows (gold images held out) with pixels and encoded labels."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    held_out: int
    key: str  # what the models are trained on: equal keys, equal models
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    soft_train: np.ndarray | None = None  # normalised annotator votes, for targets=votes


def benchmark(
    workspace: Workspace, params: BenchmarkParams, progress: Progress | None = None, engine: Engine | None = None
) -> BenchmarkResult:
    """Train and evaluate the built-in CNN on each chosen version.

    A distributed ``engine`` trains the missing models first, one task per version and seed, each
    saved to the model cache as it finishes; the steps below then load them.

    The steps, per version: its data (:func:`_version_data`), a model per seed trained or loaded from
    the cache and scored on the gold set (:func:`_score_seed`), then the version's scores compared
    with the previous version's (:func:`_version_score`); the gold set comes first
    (:func:`_choose_gold`) and the report last (:func:`_report`).

    Raises:
        WorkspaceError: unknown version.
        InputError: a split with no rows, a class missing from a version's train split, bad options.
        DeviceError: ``device`` cuda without CUDA.
    """
    from fercurate.train import make_config, resolve_device

    progress = progress or NullProgress()
    started = time.perf_counter()
    device = resolve_device(params.device)  # fail before any work
    base_config = make_config(params.preset, device=params.device, targets=params.targets, **dict(params.overrides))

    infos = _chosen_versions(workspace, params.versions)
    frames = {info.version: workspace.read(info.version)[1] for info in infos}
    newest = infos[-1]
    classes = sorted(frames[newest.version].loc[lambda d: d[Col.STATUS] == ACTIVE, Col.LABEL].unique().tolist())
    gold = _choose_gold(workspace, infos, frames, classes, progress)
    if params.gold_labels == "votes":  # score against the annotators' majority where gold rows have votes
        from fercurate.votes.stats import gold_against_votes

        y, note = gold_against_votes(gold.rows, gold.y, classes)
        gold = dataclasses.replace(gold, y=y, warnings=[*gold.warnings, note])

    if engine is not None and engine.distributed:
        _train_on(engine, workspace, infos, frames, gold, classes, base_config, params.seeds, progress)
    runs: list[dict[str, Any]] = []
    scores: list[VersionScore] = []
    gold_correct: dict[str, np.ndarray] = {}
    first_with_key: dict[str, str] = {}  # data key -> the first version trained on exactly that data
    for info in infos:
        data = _version_data(workspace, info, frames[info.version], gold, classes)
        same_as = first_with_key.setdefault(data.key, info.version)
        per_seed = [
            _score_seed(workspace, info, data, gold, _replace(base_config, seed=seed), device, classes, progress)
            for seed in range(params.seeds)
        ]
        runs.extend(run for run, _, _ in per_seed)
        score, correct = _version_score(info, data, per_seed, gold, classes, same_as)
        if scores:
            delta, lo, hi = bootstrap_delta(gold_correct[scores[-1].version], correct, params.n_boot)
            score.delta_vs_previous, score.delta_ci = delta, (lo, hi)
        gold_correct[info.version] = correct
        scores.append(score)
    return _report(workspace, params, newest, scores, runs, gold, gold_correct, classes, device, started)


def _choose_gold(
    workspace: Workspace,
    infos: list[VersionInfo],
    frames: dict[str, pd.DataFrame],
    classes: list[str],
    progress: Progress,
) -> Gold:
    """Step 1: the gold test set, its pixels and labels, and a warning when it is small."""
    newest = infos[-1]
    progress.start("Building the gold test set", None)
    rows, excluded, matched_as = _gold_set(workspace, infos, frames)
    warnings = []
    if len(rows) < SMALL_GOLD:
        warnings.append(
            f"the gold test set has only {len(rows)} images (< {SMALL_GOLD}): differences of a few points are "
            "noise; run `fercurate split` on a larger dataset or with a bigger test ratio"
        )
    if rows.empty:
        raise InputError(
            f"no gold test images: {newest.version}'s test split has no original rows free of duplicates in the "
            "compared versions' train/val; run `fercurate split` first (it creates a real test split)"
        )
    return Gold(
        rows=rows,
        excluded=excluded,
        matched_as=matched_as,
        pixels=load_pixels(workspace, newest, rows),
        y=_encode(rows[Col.LABEL], classes, newest.version, "gold"),
        ids=set(rows[Col.IMAGE_ID]),
        warnings=warnings,
    )


def _version_data(
    workspace: Workspace, info: VersionInfo, df: pd.DataFrame, gold: Gold, classes: list[str]
) -> VersionData:
    """Step 2: a version's train / val / test rows with the gold images held out, and their pixels."""
    act = df[df[Col.STATUS] == ACTIVE]
    leaked = act[Col.IMAGE_ID].isin(gold.ids)
    tr = act[(act[Col.SPLIT] == "train") & ~leaked]
    va = act[(act[Col.SPLIT] == "val") & ~leaked]
    te = act[act[Col.SPLIT] == "test"]
    for name, part in (("train", tr), ("val", va)):
        if part.empty:
            raise InputError(
                f"version {info.version} has no {name} rows to train with; run `fercurate split` or pass other versions"
            )
    missing = sorted(set(classes) - set(tr[Col.LABEL]))
    if missing:
        raise InputError(
            f"class(es) {', '.join(missing)} have no rows in {info.version}'s train split; "
            "compare versions that share the classes"
        )
    y_tr = _encode(tr[Col.LABEL], classes, info.version, "train")
    y_va = _encode(va[Col.LABEL], classes, info.version, "val")
    return VersionData(
        train=tr,
        val=va,
        test=te,
        held_out=int((leaked & act[Col.SPLIT].isin(["train", "val"])).sum()),
        key=_data_key(tr, va),
        x_train=load_pixels(workspace, info, tr),
        y_train=y_tr,
        x_val=load_pixels(workspace, info, va),
        y_val=y_va,
        x_test=load_pixels(workspace, info, te) if not te.empty else None,
        y_test=_encode(te[Col.LABEL], classes, info.version, "test") if not te.empty else None,
        soft_train=_soft_targets(workspace, info, tr, y_tr, classes),
    )


def _soft_targets(
    workspace: Workspace, info: VersionInfo, rows: pd.DataFrame, y: np.ndarray, classes: list[str]
) -> np.ndarray | None:
    """The train rows' vote distributions under the class mapping their votes were imported with
    (one-hot of the label where a row has none), or None without votes."""
    from fercurate.votes.stage import recorded_mapping
    from fercurate.votes.stats import soft_targets

    return soft_targets(rows, y, classes, recorded_mapping(workspace, info, classes))


def _score_seed(
    workspace: Workspace,
    info: VersionInfo,
    data: VersionData,
    gold: Gold,
    config: Any,
    device: Any,
    classes: list[str],
    progress: Progress,
) -> tuple[dict[str, Any], np.ndarray, Any]:
    """Step 3: train (or load) one seed's model and score it: its run record, gold predictions and metrics."""
    from fercurate.train import classification_metrics, config_hash

    model, val_acc, epochs = _trained_model(
        workspace,
        config,
        config_hash(config),
        data.key,
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        classes,
        progress,
        f"{info.version} seed {config.seed}",
        data.soft_train,
    )
    gold_pred = _predict(model, gold.pixels, device)
    train_acc = float((_predict(model, data.x_train, device) == data.y_train).mean())
    test_acc = float((_predict(model, data.x_test, device) == data.y_test).mean()) if data.x_test is not None else None
    metrics = classification_metrics(gold.y, gold_pred, classes)
    run = {
        "version": info.version,
        "stage": info.stage,
        "seed": config.seed,
        "data_key": data.key,
        "gold_acc": metrics.accuracy,
        "gold_macro_f1": metrics.macro_f1,
        "test_acc": test_acc,
        "val_acc": val_acc,
        "train_acc": train_acc,
        "epochs": epochs,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
    }
    return run, gold_pred, metrics


def _version_score(
    info: VersionInfo,
    data: VersionData,
    per_seed: list[tuple[dict[str, Any], np.ndarray, Any]],
    gold: Gold,
    classes: list[str],
    same_as: str,
) -> tuple[VersionScore, np.ndarray]:
    """Step 4: a version's scores over its seeds, and each gold item's correctness averaged over seeds."""
    mine = [run for run, _, _ in per_seed]
    preds = [pred for _, pred, _ in per_seed]
    correct = np.stack([p == gold.y for p in preds]).mean(axis=0)
    score = VersionScore(
        version=info.version,
        stage=info.stage,
        n_train=len(data.train),
        n_val=len(data.val),
        n_test=len(data.test),
        held_out=data.held_out,
        gold_acc_mean=float(np.mean([r["gold_acc"] for r in mine])),
        gold_acc_std=_spread([r["gold_acc"] for r in mine]),
        gold_f1_mean=float(np.mean([r["gold_macro_f1"] for r in mine])),
        gold_f1_std=_spread([r["gold_macro_f1"] for r in mine]),
        test_acc_mean=float(np.mean([r["test_acc"] for r in mine])) if mine[0]["test_acc"] is not None else None,
        val_acc_mean=float(np.mean([r["val_acc"] for r in mine])),
        train_acc_mean=float(np.mean([r["train_acc"] for r in mine])),
        train_val_gap=float(np.mean([r["train_acc"] - r["val_acc"] for r in mine])),
        leakage_inflation=float(np.mean([r["val_acc"] - r["gold_acc"] for r in mine])),
        per_class_f1={c: float(np.mean([m.per_class[c]["f1"] for _, _, m in per_seed])) for c in classes},
        confusion=_confusion_mean(preds, gold.y, len(classes)).tolist(),
        same_data_as=same_as if same_as != info.version else None,
    )
    return score, correct


def _spread(values: list[float]) -> float | None:
    """The standard deviation over seeds, or None for one seed (a spread of 0.0 would claim certainty)."""
    return float(np.std(values)) if len(values) > 1 else None


def _report(
    workspace: Workspace,
    params: BenchmarkParams,
    newest: VersionInfo,
    scores: list[VersionScore],
    runs: list[dict[str, Any]],
    gold: Gold,
    gold_correct: dict[str, np.ndarray],
    classes: list[str],
    device: Any,
    started: float,
) -> BenchmarkResult:
    """Step 5: the result, and the report files beside it (runs, gold set, Markdown, HTML, plots)."""
    # one folder per (newest version, preset, targets, gold labels): a run with other targets or gold
    # labels is another experiment and must not overwrite this one's report
    suffix = "".join(
        f"-{name}-{value}"
        for name, value in (("targets", params.targets), ("gold", params.gold_labels))
        if value != "labels"
    )
    out_dir = workspace.reports_dir / "benchmark" / f"{newest.version}-{params.preset}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BenchmarkResult(
        versions=scores,
        gold_size=len(gold.rows),
        gold_by_class={str(k): int(v) for k, v in gold.rows[Col.LABEL].value_counts().sort_index().items()},
        gold_excluded=gold.excluded,
        gold_matched_as=gold.matched_as,
        classes=classes,
        preset=params.preset,
        seeds=params.seeds,
        device=str(device),
        warnings=gold.warnings,
        report_dir=out_dir,
        runs=pd.DataFrame(runs),
        seconds=time.perf_counter() - started,
    )
    write_reports(result, gold.rows.assign(**{f"correct_{k}": v for k, v in gold_correct.items()}))
    return result


# -- pieces ----------------------------------------------------------------------------------------
def _chosen_versions(workspace: Workspace, specs: tuple[str, ...]) -> list[VersionInfo]:
    if specs:
        infos = [workspace.resolve(s) for s in specs]
        return sorted({i.version: i for i in infos}.values(), key=lambda i: i.version)
    return workspace.lineage()


def _gold_set(
    workspace: Workspace, infos: list[VersionInfo], frames: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, int, str]:
    """The gold rows, how many candidates were dropped for having a duplicate in some train/val, and
    whose tolerances found those: the newest dedup run in the newest version's lineage (a dataset
    deduplicated with ``--photos`` has its test images' re-crops looked for too), else the defaults."""
    from fercurate.dedup import lineage_tolerances, match_against

    newest = frames[infos[-1].version]
    tolerances, matched_as = lineage_tolerances(workspace, infos[-1].version)
    candidates = newest[
        (newest[Col.STATUS] == ACTIVE) & (newest[Col.SPLIT] == "test") & (newest[Col.SOURCE] == SOURCE_ORIGINAL)
    ].reset_index(drop=True)
    if candidates.empty:
        return candidates, 0, matched_as
    reference = pd.concat(
        [f[(f[Col.STATUS] == ACTIVE) & f[Col.SPLIT].isin(["train", "val"])] for f in frames.values()]
    ).drop_duplicates(Col.IMAGE_ID)
    # a candidate's own row in an old version's train is held out there, not a duplicate; another file
    # with the same bytes is a duplicate like any other
    reference = reference[~reference[Col.IMAGE_ID].isin(set(candidates[Col.IMAGE_ID]))]
    leaky = np.zeros(len(candidates), dtype=bool)
    if not reference.empty:
        size = tolerances.image_size
        q = load_pixels(workspace, infos[-1], candidates, size)
        r = load_pixels(workspace, infos[-1], reference.reset_index(drop=True), size)
        matches = match_against(q, r, tolerances)
        leaky[matches["query"].to_numpy(dtype=int)] = True
    # duplicates inside the gold set itself would double-count one photo: keep one per dup_group
    gold = candidates[~leaky]
    if Col.DUP_GROUP in gold.columns:
        grouped = gold[gold[Col.DUP_GROUP].notna()]
        keep = grouped.sort_values(Col.IMAGE_ID).drop_duplicates(Col.DUP_GROUP).index
        gold = gold[gold[Col.DUP_GROUP].isna() | gold.index.isin(keep)]
    return gold.reset_index(drop=True), int(leaky.sum()), matched_as


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


def _model_path(workspace: Workspace, config: Any, cfg_hash: str, data_key: str, soft_tr: np.ndarray | None) -> Path:
    """Where the model for (data, config, seed) is cached."""
    if config.targets == "votes" and soft_tr is not None:
        # The votes are part of the training data: other votes (or another class mapping) train
        # another model, so they key the cache as the rows and labels do.
        data_key += "-v" + hashlib.sha256(np.ascontiguousarray(soft_tr, dtype=np.float32).tobytes()).hexdigest()[:8]
    return workspace.cache_dir / "models" / f"{data_key}-{cfg_hash}-s{config.seed}.pt"


def _train_on(
    engine: Engine,
    workspace: Workspace,
    infos: list[VersionInfo],
    frames: dict[str, pd.DataFrame],
    gold: Gold,
    classes: list[str],
    base_config: Any,
    seeds: int,
    progress: Progress,
) -> None:
    """Train every (version, seed) model missing from the cache on ``engine``, one task each; this process
    saves each checkpoint as its task finishes, so a killed run keeps them."""
    import torch

    from fercurate.train import config_hash, save_checkpoint

    # CPU training is bit-reproducible for a given thread count: the tasks use this process's
    threads = base_config.num_threads or torch.get_num_threads()
    calls: list[tuple[Any, ...]] = []
    paths: list[Path] = []
    for info in infos:
        data = _version_data(workspace, info, frames[info.version], gold, classes)
        for seed in range(seeds):
            config = _replace(base_config, seed=seed)
            path = _model_path(workspace, config, config_hash(config), data.key, data.soft_train)
            if path.exists() or path in paths:
                continue
            soft = data.soft_train if config.targets == "votes" else None
            config = _replace(config, num_threads=threads)
            calls.append((config, data.x_train, data.y_train, soft, data.x_val, data.y_val))
            paths.append(path)
    if not calls:
        return
    progress.start(f"Training {len(calls)} model(s) on {engine.name}", len(calls))

    def finished(k: int, result: Any) -> None:
        paths[k].parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(result, paths[k])
        progress.advance(1)

    engine.run_tasks(
        train_model,
        calls,
        shared=(classes,),
        gpu=str(base_config.device).startswith("cuda"),
        cpus=threads,
        on_result=finished,
    )


def train_model(
    classes: list[str],
    config: Any,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    soft_tr: np.ndarray | None,
    x_va: np.ndarray,
    y_va: np.ndarray,
    *,
    step: Any = None,
) -> Any:
    """One benchmark model (a :class:`fercurate.train.TrainResult`), trained as :func:`_trained_model` does."""
    from fercurate.train import ArraySplit, train

    return train(
        config,
        ArraySplit(x_tr, y_tr, soft_tr),
        ArraySplit(x_va, y_va),
        classes,
        progress=(lambda _e: step(1)) if step is not None else None,
    )


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
    soft_tr: np.ndarray | None = None,
) -> tuple[Any, float, int]:
    """A model for (data, config, seed): loaded from the cache, or trained and cached."""
    from fercurate.train import ArraySplit, load_checkpoint, save_checkpoint, train

    path = _model_path(workspace, config, cfg_hash, data_key, soft_tr)
    if path.exists():
        cached = load_checkpoint(path, device=config.device if config.device != "auto" else "cpu")
        return cached.model, float(cached.best_metric), int(cached.best_epoch)
    progress.start(f"Training {label}", config.epochs)
    result = train(
        config,
        ArraySplit(x_tr, y_tr, soft_tr if config.targets == "votes" else None),
        ArraySplit(x_va, y_va),
        classes,
        progress=lambda _e: progress.advance(1),
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
