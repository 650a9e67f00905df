"""``fercurate relabel-review flag``: find the labels that are probably wrong.

Every active row gets out-of-fold class probabilities from k-fold cross-fitting of the built-in
CNN: the rows are split into ``folds`` stratified folds that keep each ``dup_group`` whole (so no
image is scored by a model that trained on its near-copy), and each fold is predicted by a model
trained on the others. Confident learning (:mod:`fercurate.relabel.scoring`) turns the
probabilities into a mislabel score, a suggested label and a flag per row.

Writes a new version (stage ``relabel-flag``) with ``prob_<class>``, ``mislabel_score``,
``suggested_label`` and ``flagged`` columns (null on rows that are not active), and into the
version's report folder ``review_queue.parquet`` (the flagged rows, most likely wrong first),
``flagged.html`` (a self-contained contact sheet of the top flags per class) and ``flagged.png``.

Out-of-fold probabilities are cached per fold under ``cache/relabel-oof/<key>/``, keyed by the
active rows (id, label, file hash, duplicate group), the fold count, the seed and the training
config's hash: a re-run with unchanged rows and settings trains nothing, and a run killed mid-way
resumes at the first fold it had not finished.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.engine import Engine
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, Col, VoteCol, atomic_write, atomic_write_text
from fercurate.progress import NullProgress, Progress
from fercurate.relabel.queue import (
    IN_BUDGET,
    PRECISION_PNG,
    QUEUE_COLUMNS,
    QUEUE_RANK,
    QueuePlan,
    place_columns,
    plan_queue,
    precision_plot,
    queue_columns,
)
from fercurate.relabel.scoring import (
    FILTERS,
    RANKERS,
    LabelScores,
    NoiseEstimate,
    blend_fit,
    estimate_noise,
    score_labels,
)
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace, load_pixels

STAGE = "relabel-flag"
PROB_PREFIX = Col.PROB_PREFIX
MISLABEL_SCORE = Col.MISLABEL_SCORE
SUGGESTED_LABEL = Col.SUGGESTED_LABEL
FLAGGED = Col.FLAGGED
DUP_GROUP = Col.DUP_GROUP
QUEUE_FILE = "review_queue.parquet"
HTML_FILE = "flagged.html"
PNG_FILE = "flagged.png"
#: Bumped when the cross-fitting changes in a way that makes cached probabilities stale.
OOF_CACHE_VERSION = 5
#: Each fold model records its fit of its training rows (``fit_fold``) over this last share of its
#: schedule: the early epochs, before it has learned faces, say little about any label.
FIT_FROM = 0.5


@dataclass(frozen=True)
class CrossFitPlan:
    """How cross-fitting spends its work for one preset: how many folds, how many epochs.

    The work is a budget of training images seen by all the fold models together
    (``samples``), so the run time stays about the same whatever the dataset's size: ``k``
    folds on ``n`` rows train ``k`` models on ``(k - 1) / k`` of the rows each, and each model
    gets ``epochs = samples / (k * fit rows)``, within ``[min_epochs, max_epochs]``. The fold
    count is the largest in ``folds`` whose models still get ``full_epochs``: a small set, which
    is cheap, gets the most folds (each model trains on more of the data) and enough epochs; a
    large one gets fewer folds so that each model still trains long enough to learn faces.

    A small set also gets smaller batches (:func:`cross_fit_batch`): at the preset's batch a fold of
    2,000 images is 16 steps an epoch, and 13 epochs of that (measured) leave the model untrained.

    Attributes:
        samples: training images seen by all fold models together (the budget).
        full_epochs: epochs a model needs to train well; the fold count drops to keep them.
        min_epochs: never fewer epochs than this.
        max_epochs: never more epochs than this (None: the preset's).
        folds: ``(fewest, most)`` folds the plan chooses from.
        overrides: other TrainConfig fields changed for cross-fitting.
        min_steps: the batch halves (down to ``small_batch``) while an epoch has fewer steps.
        small_batch: the smallest batch.
        small_max_epochs: ``max_epochs`` once the batch is smaller than the preset's.
    """

    samples: int
    full_epochs: int
    min_epochs: int
    max_epochs: int | None = None
    folds: tuple[int, int] = (3, 5)
    overrides: dict[str, Any] = field(default_factory=dict)
    min_steps: int = 64
    small_batch: int = 32
    small_max_epochs: int = 18


#: Cross-fitting plans per preset; presets not listed train as they are, with 5 folds. Measured
#: in bench/bench_relabel.py on real FER2013 faces and on the demo (docs/relabel.md).
CROSS_FIT: dict[str, CrossFitPlan] = {
    # shifted views at prediction (tta_shift): +0.5 points of out-of-fold accuracy on real fer4
    # for ~8% more time; no label smoothing: +0.7 points and a higher F1 (the preset smooths for
    # gold accuracy, flagging ranks by the margins smoothing compresses); no early-stopping
    # hold-out (FlagParams.val_fraction 0); no dropout and a peak rate of 5e-3 (the preset's 3e-3
    # and dropout 0.3 left fold models that see 2/3 of the rows underfitting): +1.2 points on real
    # fer4 over two fold draws. 3 x 12 at 18.7K: 13 epochs took 9 min 50 s on 2 idle cores, too
    # close to the 10-minute target, and cutting the 13th costs 0.3 points of out-of-fold
    # accuracy and no precision. docs/relabel.md has each figure.
    "cpu": CrossFitPlan(
        samples=450_000,
        full_epochs=9,
        min_epochs=4,
        max_epochs=12,
        overrides={"tta_shift": 3, "label_smoothing": 0.0, "dropouts": (0.0, 0.0, 0.0, 0.0), "lr": 5e-3},
    ),
    # flip averaging is not part of the recipe, but costs nothing in training and sharpens the
    # out-of-fold probabilities
    "bpp": CrossFitPlan(samples=1_500_000, full_epochs=30, min_epochs=20, overrides={"tta_flip": True}),
}

#: Folds when the preset has no plan and none were asked for.
DEFAULT_FOLDS = 5


def fit_rows(rows: int, folds: int, val_fraction: float) -> int:
    """Rows each fold's model trains on: the other folds, less the early-stopping hold-out."""
    return max(1, int(rows * (folds - 1) / folds * (1 - val_fraction)))


def cross_fit_folds(plan: CrossFitPlan | None, rows: int, val_fraction: float) -> int:
    """The most folds of the plan whose models still get ``full_epochs`` of the budget."""
    if plan is None:
        return DEFAULT_FOLDS
    fewest, most = plan.folds
    for k in range(most, fewest, -1):
        if plan.samples / (k * fit_rows(rows, k, val_fraction)) >= plan.full_epochs:
            return k
    return fewest


#: How the learning rate follows a smaller batch: ``lr * (batch / preset batch) ** LR_BATCH_POWER``.
#: 0.66 joins the two rates measured best: the cpu plan's 5e-3 at 128 (real fer4) and 2e-3 at 32,
#: the rate ``demo --run`` trains a few thousand images with (and the best of 1.5e-3 and 2e-3 at
#: batch 32 on the demo's folds).
LR_BATCH_POWER = 0.66


def cross_fit_batch(plan: CrossFitPlan | None, preset_batch: int, train_rows: int) -> int:
    """Each fold model's batch: the preset's, halved while an epoch of ``train_rows`` would take
    fewer than ``plan.min_steps`` steps, never below ``plan.small_batch``."""
    batch = preset_batch
    if plan is None:
        return batch
    while batch // 2 >= plan.small_batch and train_rows / batch < plan.min_steps:
        batch //= 2
    return batch


def cross_fit_config(
    plan: CrossFitPlan | None, config: Any, train_rows: int, folds: int, epochs: int | None = None
) -> Any:
    """The preset's config as each fold model trains: the plan's batch (:func:`cross_fit_batch`; a
    smaller one gets a lower rate, ``LR_BATCH_POWER``) and epochs (:func:`cross_fit_epochs`), or
    ``epochs`` when given."""
    batch = cross_fit_batch(plan, config.batch_size, train_rows)
    small = batch < config.batch_size
    if small:
        config = dataclasses.replace(
            config, batch_size=batch, lr=config.lr * (batch / config.batch_size) ** LR_BATCH_POWER
        )
    if epochs is None:
        epochs = cross_fit_epochs(plan, config.epochs, train_rows, folds, small=small)
    return dataclasses.replace(config, epochs=epochs)


def cross_fit_epochs(
    plan: CrossFitPlan | None, preset_epochs: int, train_rows: int, folds: int = 1, small: bool = False
) -> int:
    """Epochs of each fold's model: the plan's budget shared by ``folds`` models, within bounds
    (``small``: the batch is below the preset's, and the ceiling is ``plan.small_max_epochs``)."""
    if plan is None:
        return preset_epochs
    ceiling = plan.max_epochs if plan.max_epochs is not None else preset_epochs
    if small:
        ceiling = max(ceiling, plan.small_max_epochs)
    return int(min(ceiling, max(plan.min_epochs, round(plan.samples / (folds * max(train_rows, 1))))))


def prob_column(cls: str) -> str:
    """The manifest column holding the out-of-fold probability of ``cls``."""
    return f"{PROB_PREFIX}{cls}"


def flag_columns(df: pd.DataFrame) -> list[str]:
    """The columns a previous flag wrote into ``df`` (replaced, not stacked, by a new flag)."""
    own = (MISLABEL_SCORE, SUGGESTED_LABEL, FLAGGED, VoteCol.FLAG_KIND, *QUEUE_COLUMNS)
    return [c for c in df.columns if c.startswith(PROB_PREFIX) or c in own]


def classes_of(df: pd.DataFrame) -> list[str]:
    """The classes a flagged manifest has probabilities for, in column order."""
    return [c[len(PROB_PREFIX) :] for c in df.columns if c.startswith(PROB_PREFIX)]


@dataclass(frozen=True)
class FlagParams:
    """Options of ``fercurate relabel-review flag`` (the CLI's defaults point here).

    Attributes:
        version: manifest version to flag (default: latest).
        folds: cross-fitting folds; every row is predicted by a model trained on the other folds
            (default: :func:`cross_fit_folds` of the preset's :data:`CROSS_FIT` plan and the
            dataset's size).
        preset: training preset (``cpu``, ``bpp``, ``tiny``); see ``fercurate.train.PRESETS``.
        epochs: epochs of each fold's model (default: :func:`cross_fit_epochs` of the preset's
            :data:`CROSS_FIT` plan and the dataset's size).
        seed: seeds the folds and every model (fold ``i`` trains with ``seed + i``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        method: ranking of the flags, a key of ``scoring.RANKERS``.
        filter_by: which rows are flagged, a key of ``scoring.FILTERS``.
        top_per_class: flagged images per given class in ``flagged.html`` / ``flagged.png``.
        val_fraction: share of each fold's training rows held out for early stopping; 0 (the
            default) holds none out: each model trains the plan's whole one-cycle schedule on
            all the other folds' rows and its last epoch predicts.
        num_threads: torch CPU threads while training (None keeps torch's default); execution only,
            so it is not part of the cache key.
        budget: flagged images the review page asks a person to decide, from the top of the queue
            (None: sized from the estimated number of wrong labels, see ``queue.default_budget``).
        fit_weight: weight of the fold models' fit of each row while training in the ranking
            (``scoring.blend_fit``); 0 ranks by the out-of-fold probabilities alone. The flags
            and the estimates never use the weight (the fit itself caps ``p_suggested_true``).
    """

    version: str | None = None
    folds: int | None = None
    preset: str = "cpu"
    epochs: int | None = None
    seed: int = 0
    device: str = "auto"
    method: str = "normalized_margin"
    filter_by: str = "predicted_neq_given"
    top_per_class: int = 24
    val_fraction: float = 0.0
    num_threads: int | None = None
    # annotator votes (fercurate.votes.flagging): auto = votes decide rows that have them, only = no model
    votes: str = "auto"
    max_support: float = 0.1
    min_majority: float = 0.9
    budget: int | None = None
    fit_weight: float = 0.5


@dataclass(frozen=True)
class FlagResult:
    """What a flag run found and the version it wrote."""

    version: VersionInfo
    parent: str
    rows: int
    flagged: int
    classes: list[str]
    thresholds: dict[str, float]
    oof_accuracy: float
    by_pair: dict[str, int]
    folds_trained: int
    folds_cached: int
    queue_path: Path
    html_path: Path
    png_path: Path
    config_hash: str
    cache_key: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    estimated_wrong: int = 0
    expected_wrong: float = 0.0
    estimated_by_pair: dict[str, int] = field(default_factory=dict)
    budget: int = 0
    precision_table: list[dict[str, float | int]] = field(default_factory=list)
    temperature: float = 1.0
    precision_png: Path | None = None
    anchor_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(
            self,
            rename={
                "queue_path": "queue",
                "html_path": "html",
                "png_path": "png",
                "precision_table": "expected_precision",
            },
            thresholds={k: round(v, 4) for k, v in self.thresholds.items()},
            oof_accuracy=round(self.oof_accuracy, 4),
            expected_wrong=round(self.expected_wrong, 1),
            temperature=round(self.temperature, 4),
        )


def flag(
    workspace: Workspace, params: FlagParams, progress: Progress | None = None, engine: Engine | None = None
) -> FlagResult:
    """Cross-fit the CNN, score every active row and commit a flagged version.

    The fold models train on ``engine`` (default: one after the other here).

    Raises:
        InputError: for bad options or too few rows per class for the folds.
        WorkspaceError: for a missing workspace or an unknown version.
    """
    from fercurate.train import config_hash, make_config

    progress = progress or NullProgress()
    started = time.perf_counter()
    _check_params(params)
    if params.votes == "only":  # annotator votes alone, no model trained
        from fercurate.votes.flagging import flag_by_votes

        return flag_by_votes(workspace, params, progress)  # type: ignore[no-any-return]
    plan = CROSS_FIT.get(params.preset)
    execution = {"seed": params.seed, "device": params.device, "num_threads": params.num_threads}
    config = make_config(params.preset, **(plan.overrides if plan else {}), **execution)
    info, df = workspace.read(params.version)

    rows = active_rows(df)
    if params.folds is None:
        # the plan's fold count for this many rows; recorded in the version's params
        params = dataclasses.replace(params, folds=cross_fit_folds(plan, len(rows), params.val_fraction))
    n_folds = int(params.folds or DEFAULT_FOLDS)
    classes = sorted(rows[Col.LABEL].unique().tolist())
    _check_rows(rows, classes, n_folds)
    config = cross_fit_config(plan, config, fit_rows(len(rows), n_folds, params.val_fraction), n_folds, params.epochs)
    labels = np.array([classes.index(c) for c in rows[Col.LABEL]], dtype=np.int64)
    groups = fold_groups(rows)
    key = cache_key(rows, groups, params, config_hash(config))

    x = load_pixels(workspace, info, rows, size=config.image_size, progress=progress)
    folds = assign_folds(labels, groups, n_folds, params.seed)
    probs, fit, trained, cached = cross_fit(
        x, labels, groups, folds, classes, config, workspace.cache_dir / "relabel-oof" / key, params, progress, engine
    )
    scores = score_labels(
        probs,
        labels,
        method=params.method,
        filter_by=params.filter_by,
        rank_probs=blend_fit(probs, fit, params.fit_weight),
    )
    noise = estimate_noise(probs, labels, scores, fit=fit)
    queue_plan = plan_queue(scores, noise, params.budget)

    out = _with_flag_columns(df, rows, classes, probs, scores, queue_columns(len(rows), noise, queue_plan))
    n_flagged = int(scores.flagged.sum())
    if params.votes == "auto":  # rows with annotator votes: the votes decide (fercurate.votes.flagging)
        from fercurate.votes.flagging import combine_with_model

        out = combine_with_model(out, rows, classes, workspace, info, params.max_support, params.min_majority)
        n_flagged = int(out[FLAGGED].fillna(False).astype(bool).sum())
    given, suggested = labels[scores.flagged], scores.suggested[scores.flagged]
    pairs = Counter(f"{classes[g]}->{classes[s]}" for g, s in zip(given, suggested, strict=True))
    thresholds = {c: float(t) for c, t in zip(classes, scores.thresholds, strict=True)}
    oof_accuracy = float((probs.argmax(axis=1) == labels).mean())
    with workspace.lock("fercurate relabel-review flag"):
        version = workspace.commit(
            out,
            stage=STAGE,
            parent=info,
            params={**asdict(params), "classes": classes},
            extra={
                "classes": classes,
                "flagged": n_flagged,
                "thresholds": thresholds,
                "oof_accuracy": oof_accuracy,
                "config_hash": config_hash(config),
                "cache_key": key,
                "image_size": config.image_size,
                "preset": params.preset,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "lr": config.lr,
                "confident_joint": scores.joint.astype(int).tolist(),
                "estimated_wrong": queue_plan.estimated_wrong,
                "expected_wrong": noise.expected_wrong,
                "noise_channel": noise.channel.round(4).tolist(),
                "anchor_share": noise.anchor_share,
                "budget": queue_plan.budget,
                "temperature": noise.temperature,
                "expected_precision": queue_plan.table(),
            },
        )
    with workspace.report(version.version) as report:
        queue = review_queue(out, classes)
        atomic_write(report / QUEUE_FILE, lambda tmp: queue.to_parquet(tmp, index=False))
        top = _top_per_class(queue, params.top_per_class)
        shown = set(top[Col.IMAGE_ID])
        pixels = {iid: x[i] for i, iid in enumerate(rows[Col.IMAGE_ID]) if iid in shown}
        plot = precision_plot(queue_plan, f"{version.version}: expected precision of the review queue")
        atomic_write(report / PRECISION_PNG, lambda tmp: Path(tmp).write_bytes(plot))
        section = _queue_section(queue_plan, noise, classes, plot)
        atomic_write_text(report / HTML_FILE, flagged_html(top, classes, pixels, version.version, section))
        sheet = flagged_sheet(top, pixels, f"{version.version}: top flagged per given class (given>suggested p)")
        atomic_write(report / PNG_FILE, lambda tmp: sheet.save(tmp, format="PNG"))

    notes = []
    if n_flagged == 0:
        notes.append("nothing flagged: the model agrees with (or is unsure about) every label")
    return FlagResult(
        version=version,
        parent=info.version,
        rows=len(rows),
        flagged=n_flagged,
        classes=classes,
        thresholds=thresholds,
        oof_accuracy=oof_accuracy,
        by_pair=dict(pairs.most_common()),
        folds_trained=trained,
        folds_cached=cached,
        queue_path=report / QUEUE_FILE,
        html_path=report / HTML_FILE,
        png_path=report / PNG_FILE,
        config_hash=config_hash(config),
        cache_key=key,
        seconds=time.perf_counter() - started,
        notes=notes,
        estimated_wrong=queue_plan.estimated_wrong,
        expected_wrong=noise.expected_wrong,
        estimated_by_pair=noise.wrong_by_pair(classes),
        budget=queue_plan.budget,
        precision_table=queue_plan.table(),
        temperature=noise.temperature,
        precision_png=report / PRECISION_PNG,
        anchor_share=noise.anchor_share,
    )


# -- inputs ----------------------------------------------------------------------------------------
def _check_params(params: FlagParams) -> None:
    if params.folds is not None and params.folds < 2:
        raise InputError(
            f"folds {params.folds} is too small; cross-fitting needs at least 2 (default: the preset's plan)",
            param="folds",
        )
    if params.method not in RANKERS:
        raise InputError(f"method '{params.method}' is not one of: {', '.join(RANKERS)}", param="method")
    if params.filter_by not in FILTERS:
        raise InputError(f"filter_by '{params.filter_by}' is not one of: {', '.join(FILTERS)}", param="filter_by")
    if not 0.0 <= params.val_fraction < 0.5:
        raise InputError(f"val_fraction {params.val_fraction} must be from 0 to below 0.5 (default 0: no hold-out)")
    if params.top_per_class < 0:
        raise InputError(f"top_per_class {params.top_per_class} must be 0 or more", param="top_per_class")
    from fercurate.votes.flagging import VOTE_MODES

    if params.votes not in VOTE_MODES:
        raise InputError(f"votes '{params.votes}' is not one of: {', '.join(VOTE_MODES)}", param="votes")
    if not 0.0 <= params.max_support < 0.5:
        raise InputError(
            f"max_support {params.max_support} must be from 0 to below 0.5 (default 0.1)", param="max_support"
        )
    if not 0.5 < params.min_majority <= 1.0:
        raise InputError(
            f"min_majority {params.min_majority} must be above 0.5 and at most 1 (default 0.9)", param="min_majority"
        )
    if params.budget is not None and params.budget < 0:
        raise InputError(
            f"budget {params.budget} must be 0 or more (default: sized from the estimated wrong labels)",
            param="budget",
        )
    if not 0.0 <= params.fit_weight <= 1.0:
        raise InputError(
            f"fit_weight {params.fit_weight} must be from 0 to 1 (default 0.5; 0 ranks by the out-of-fold "
            "probabilities alone)",
            param="fit_weight",
        )


def active_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Active rows sorted by image id, so folds do not depend on the manifest's row order."""
    return df[df[Col.STATUS] == ACTIVE].sort_values(Col.IMAGE_ID, kind="stable").reset_index(drop=True)


def _check_rows(rows: pd.DataFrame, classes: list[str], folds: int) -> None:
    if len(classes) < 2:
        raise InputError(f"relabel-review flag needs active rows of at least two classes, found {classes or 'none'}")
    counts = rows[Col.LABEL].value_counts()
    # each fold's training part must hold every class, and its held-out part some of them
    need = folds + 1
    small = [f"{c} ({counts[c]})" for c in classes if counts[c] < need]
    if small:
        raise InputError(
            f"class(es) {', '.join(small)} have fewer than {need} active rows, too few for "
            f"folds {folds}; pass smaller folds or add images of them",
            param="folds",
        )


def fold_groups(rows: pd.DataFrame) -> np.ndarray:
    """The fold-grouping key per row: its ``dup_group`` where it has one, else the row itself."""
    own = ("id:" + rows[Col.IMAGE_ID].astype(str)).to_numpy()
    if DUP_GROUP not in rows.columns:
        return own
    dup = rows[DUP_GROUP]
    return np.where(dup.notna().to_numpy(), ("dup:" + dup.astype(str)).to_numpy(), own)


def cache_key(rows: pd.DataFrame, groups: np.ndarray, params: FlagParams, config_hash: str) -> str:
    """What the out-of-fold probabilities depend on, hashed: rows, labels, files, groups, settings."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "v": OOF_CACHE_VERSION,
                "folds": params.folds,
                "seed": params.seed,
                "val_fraction": params.val_fraction,
                "config": config_hash,
            },
            sort_keys=True,
        ).encode()
    )
    for iid, label, sha, group in zip(
        rows[Col.IMAGE_ID], rows[Col.LABEL], rows[Col.SHA256].astype(str), groups, strict=True
    ):
        h.update(f"{iid}\t{label}\t{sha}\t{group}\n".encode())
    return h.hexdigest()[:20]


# -- cross-fitting ---------------------------------------------------------------------------------
def assign_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per row: stratified by label, with every group inside one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise InputError(
            f"only {n_groups} distinct images or duplicate groups, fewer than folds {folds}", param="folds"
        )
    out = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        out[test] = fold
    return out


def _early_stopping_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows (positions) into fit and validation parts, groups kept whole."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, min(int(round(1 / fraction)), len(np.unique(groups))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit, val = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return fit, val


def cross_fit(
    x: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: np.ndarray,
    classes: list[str],
    config: Any,
    cache: Path,
    params: FlagParams,
    progress: Progress,
    engine: Engine | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Out-of-fold probabilities (N, K), one model per fold on ``engine``, each cached as it finishes.

    Returns:
        ``(probs, fit, folds_trained, folds_cached)``: ``fit`` (N, K) is the mean over the fold
        models that trained on a row of their fit of it (:func:`fit_fold`), NaN where none did.
    """
    import torch

    n_folds = int(folds.max()) + 1
    shape = (len(labels), len(classes))
    probs = np.zeros(shape, dtype=np.float32)
    fit_sum, fit_n = np.zeros(shape), np.zeros(len(labels))
    # CPU training is bit-reproducible for a given thread count: pin this process's count, so a
    # fold trained in a Ray worker (one thread by default) gives the same probabilities
    threads = config.num_threads or torch.get_num_threads()
    config = dataclasses.replace(config, num_threads=threads)

    def add(fold: int, fold_probs: np.ndarray, fold_fit: np.ndarray) -> None:
        probs[folds == fold] = fold_probs
        seen = ~np.isnan(fold_fit).any(axis=1)
        fit_sum[seen] += fold_fit[seen]
        fit_n[seen] += 1

    todo = []
    for fold in range(n_folds):
        test = np.flatnonzero(folds == fold)
        path, fit_path = cache / f"fold-{fold}.npy", cache / f"fold-{fold}-fit.npy"
        if path.exists() and fit_path.exists():
            stored, stored_fit = np.load(path), np.load(fit_path)
            if stored.shape == (len(test), len(classes)) and stored_fit.shape == shape:
                add(fold, stored, stored_fit)
                continue
        todo.append(fold)

    def started(k: int) -> None:
        progress.start(f"Fold {todo[k] + 1}/{n_folds}: training", config.epochs)

    def finished(k: int, result: tuple[np.ndarray, np.ndarray]) -> None:
        # only this process writes the workspace; a killed run keeps every fold finished before
        # (the fit first: a fold counts as cached once its out-of-fold file is there)
        fold_probs, fold_fit = result
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(cache / f"fold-{todo[k]}-fit.npy", lambda tmp: _save_npy(tmp, fold_fit))
        atomic_write(cache / f"fold-{todo[k]}.npy", lambda tmp: _save_npy(tmp, fold_probs))
        add(todo[k], fold_probs, fold_fit)

    (engine or Engine()).run_tasks(
        fit_fold,
        [(fold, params.val_fraction, params.seed) for fold in todo],
        shared=(x, labels, groups, folds, classes, config),
        gpu=str(config.device).startswith("cuda"),
        cpus=threads,
        on_start=started,
        on_step=progress.advance,
        on_result=finished,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = (fit_sum / fit_n[:, None]).astype(np.float32)
    return probs, fit, len(todo), n_folds - len(todo)


def fit_fold(
    x: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: np.ndarray,
    classes: list[str],
    config: Any,
    fold: int,
    val_fraction: float,
    seed: int,
    *,
    step: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One fold's model: out-of-fold probabilities of this fold, and its fit of the rows it trained on.

    Returns ``(probs, fit)``: ``probs`` (rows of this fold, K) predicted by a model trained on
    the other folds; ``fit`` (all N rows, K), each training row's mean softmax over the batches
    it trained in during the last :data:`FIT_FROM` of the schedule (``TrainResult.fit_probs``),
    NaN on the rows it did not train on. Pure (arrays in, arrays out), so any engine may run it;
    ``step(1)`` ticks after each epoch.
    """
    import warnings

    from fercurate.train import ArraySplit, predict_proba, train

    test = np.flatnonzero(folds == fold)
    rest = np.flatnonzero(folds != fold)
    if val_fraction > 0:
        fit, val = _early_stopping_split(labels[rest], groups[rest], val_fraction, seed + fold)
        fit, held_out = rest[fit], ArraySplit(x[rest[val]], labels[rest[val]])
    else:  # the whole schedule on every other row; the last epoch predicts
        fit, held_out = rest, None
    fold_config = dataclasses.replace(config, seed=config.seed + fold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn/torch chatter; the CLI owns the screen
        result = train(
            fold_config,
            ArraySplit(x[fit], labels[fit]),
            held_out,
            classes,
            progress=(lambda _epoch: step(1)) if step is not None else None,
            record_from=int(fold_config.epochs * (1.0 - FIT_FROM)),
        )
    fit_probs = np.full((len(labels), len(classes)), np.nan, dtype=np.float32)
    if result.fit_probs is not None:
        fit_probs[fit] = result.fit_probs
    probs = predict_proba(result.model, x[test], batch_size=fold_config.eval_batch_size, amp=fold_config.amp)
    return probs, fit_probs


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(fh, array)


# -- outputs ---------------------------------------------------------------------------------------
def _with_flag_columns(
    df: pd.DataFrame,
    rows: pd.DataFrame,
    classes: list[str],
    probs: np.ndarray,
    scores: LabelScores,
    extra: dict[str, np.ndarray],
) -> pd.DataFrame:
    """``df`` with fresh flag columns; rows that are not active get nulls."""
    out = df.drop(columns=flag_columns(df)).copy()
    pos = pd.Series(np.arange(len(rows)), index=rows[Col.IMAGE_ID].to_numpy())
    where = out[Col.IMAGE_ID].map(pos)
    has = where.notna().to_numpy()
    idx = where[has].astype(int).to_numpy()
    for j, cls in enumerate(classes):
        col = np.full(len(out), np.nan)
        col[has] = probs[idx, j]
        out[prob_column(cls)] = col
    score = np.full(len(out), np.nan)
    score[has] = scores.score[idx]
    out[MISLABEL_SCORE] = score
    suggested = pd.Series([None] * len(out), dtype="string")
    suggested[has] = np.asarray(classes, dtype=object)[scores.suggested[idx]]
    out[SUGGESTED_LABEL] = suggested.to_numpy()
    flagged = pd.array([pd.NA] * len(out), dtype="boolean")
    flagged[has] = scores.flagged[idx]
    out[FLAGGED] = flagged
    place_columns(out, has, idx, extra)
    return out


def review_queue(df: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The flagged active rows, most likely wrong first, with what a reviewer needs to decide."""
    flagged = df[(df[Col.STATUS] == ACTIVE) & df[FLAGGED].fillna(False).astype(bool)]
    cols = [Col.IMAGE_ID, Col.PATH, Col.SPLIT, Col.LABEL, SUGGESTED_LABEL, MISLABEL_SCORE]
    cols += [c for c in QUEUE_COLUMNS if c in df.columns and c != QUEUE_RANK]
    cols += [prob_column(c) for c in classes]
    cols += [c for c in (VoteCol.FLAG_KIND,) if c in flagged.columns]  # wrong / ambiguous, with annotator votes
    cols += [c for c in vote_columns(df) if c not in cols]
    queue = flagged[cols].sort_values([MISLABEL_SCORE, Col.IMAGE_ID], ascending=[False, True], kind="stable")
    queue = queue.reset_index(drop=True)
    queue.insert(0, "rank", np.arange(1, len(queue) + 1))
    if IN_BUDGET not in queue.columns:  # a version flagged before budgets: the whole queue is in it
        queue[IN_BUDGET] = True
    return queue


#: Annotator-vote columns (``votes_<class>`` counts and ``vote_n``) the queue carries when present.
VOTES_PREFIX = "votes_"
VOTE_N = "vote_n"


def vote_columns(df: pd.DataFrame) -> list[str]:
    """The annotator-vote count columns of ``df`` (``votes_<class>``, then ``vote_n``), if any."""
    votes = [c for c in df.columns if c.startswith(VOTES_PREFIX)]
    return votes + ([VOTE_N] if votes and VOTE_N in df.columns else [])


def _top_per_class(queue: pd.DataFrame, n: int) -> pd.DataFrame:
    return queue.groupby(Col.LABEL, sort=True, group_keys=False).head(n).sort_values([Col.LABEL, "rank"], kind="stable")


def _png_data_uri(pixels: np.ndarray) -> str:
    from fercurate.images import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


def _queue_section(plan: QueuePlan, noise: NoiseEstimate, classes: list[str], plot: bytes) -> str:
    """The flag report's queue part: estimated wrong labels, the budget, expected precision by rank."""
    by_pair = noise.wrong_by_pair(classes)
    pairs = "".join(f"<tr><td>{html.escape(p)}</td><td>{n}</td></tr>" for p, n in by_pair.items())
    ranks = "".join(
        f"<tr><td>{r['rank']}</td><td>{r['expected_precision']:.3f}</td><td>{r['expected_wrong_found']:.0f}</td></tr>"
        for r in plan.table()
    )
    sized = "sized from the estimate" if plan.default_budget else "set with --budget"
    src = "data:image/png;base64," + base64.b64encode(plot).decode("ascii")
    return (
        f"<h2>Review queue</h2><p>Estimated wrong labels (confident joint): <b>{plan.estimated_wrong}</b> "
        f"(by the calibrated per-image probabilities, the noise channel read from the surest "
        f"{noise.anchor_share:.0%} of each class: {noise.expected_wrong:.0f}); "
        f"flagged: {len(plan.order)}; review budget: <b>{plan.budget}</b> ({sized}), expected precision "
        f"{plan.precision_at(plan.budget):.2f}. The rest stay flagged in the manifest.</p>"
        f"<table><tr><th>given&rarr;true</th><th>estimated wrong</th></tr>{pairs}</table>"
        f"<table><tr><th>rank</th><th>expected precision</th><th>expected wrong found</th></tr>{ranks}</table>"
        f'<p><img class=plot src="{src}" alt="expected precision by rank"></p>'
    )


def flagged_html(
    top: pd.DataFrame, classes: list[str], pixels: dict[str, np.ndarray], version: str, queue_section: str = ""
) -> str:
    """A self-contained page (images inline as base64 PNG) of the top flagged rows per given class."""
    sections = []
    for given, part in top.groupby(Col.LABEL, sort=True):
        cards = []
        for rec in part.to_dict("records"):
            probs = sorted(((c, float(rec[prob_column(c)])) for c in classes), key=lambda t: -t[1])
            prob_text = " ".join(f"{html.escape(c)} {p:.2f}" for c, p in probs[:3])
            img = pixels.get(rec[Col.IMAGE_ID])
            src = _png_data_uri(img) if img is not None else ""
            cards.append(
                f'<figure><img src="{src}" width="144" height="144" alt="{html.escape(rec[Col.IMAGE_ID])}">'
                f"<figcaption><b>#{rec['rank']}</b> {html.escape(str(given))} &rarr; "
                f"<b>{html.escape(str(rec[SUGGESTED_LABEL]))}</b><br><small>{prob_text}</small><br>"
                f"<small class=path>{html.escape(str(rec[Col.PATH]))}</small></figcaption></figure>"
            )
        sections.append(
            f"<h2>given {html.escape(str(given))} ({len(part)} shown)</h2><div class=grid>{''.join(cards)}</div>"
        )
    body = "".join(sections) or "<p>Nothing was flagged.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fercurate {version}: flagged labels</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 160px; }}
img {{ image-rendering: pixelated; background: #000; display: block; }}
figcaption {{ font-size: 13px; }}
.path {{ color: #777; word-break: break-all; }}
table {{ border-collapse: collapse; display: inline-table; margin: 0 2em 1em 0; vertical-align: top; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 2px 10px; text-align: right; }}
img.plot {{ image-rendering: auto; background: none; }}
</style></head><body>
<h1>{version}: likely wrong labels, top flagged per given class</h1>
<p>given &rarr; <b>suggested</b>, then the three most probable classes (out-of-fold).
Review them all with <code>fercurate relabel-review serve</code>.</p>
{queue_section}
{body}
</body></html>
"""


def flagged_sheet(top: pd.DataFrame, pixels: dict[str, np.ndarray], title: str) -> Any:
    """The same selection as :func:`flagged_html` as one PNG contact sheet (a frame colour per class)."""
    from fercurate.images import contact_sheet

    images, captions, groups = [], [], []
    order = {c: i for i, c in enumerate(sorted(top[Col.LABEL].unique()))}
    for rec in top.to_dict("records"):
        img = pixels.get(rec[Col.IMAGE_ID])
        if img is None:
            continue
        images.append(img)
        suggested = rec[SUGGESTED_LABEL]
        if pd.isna(suggested):  # annotator votes for no class of the dataset (not a face, say)
            captions.append(f"{rec[Col.LABEL]}>none")
        else:
            captions.append(f"{rec[Col.LABEL]}>{suggested} {float(rec[prob_column(str(suggested))]):.2f}")
        groups.append(order[rec[Col.LABEL]])
    return contact_sheet(images, captions, groups=groups, title=title, columns=8, scale=3)
