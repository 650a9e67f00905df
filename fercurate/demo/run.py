"""``fercurate demo --run``: the whole pipeline on the embedded demo, each stage scored against truth.

The demo generator knows what it planted (wrong labels, duplicates, invalid files, the lopsided
split, the rare class), so every stage's output can be scored: precision and recall of what it
found, and the final benchmark shows whether the cleaning raised accuracy on the gold test set.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fercurate.affectnet.params import SOURCE_AFFECTNET
from fercurate.demo import DemoParams, generate_demo
from fercurate.demo.generate import demo_record
from fercurate.demo.params import Truth
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, INVALID, REMOVED, Col
from fercurate.progress import NullProgress, Progress
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace


@dataclass(frozen=True)
class DemoRunParams:
    """Options of ``fercurate demo --run``."""

    dest: Path
    demo: DemoParams = DemoParams()
    overwrite: bool = False
    preset: str = "cpu"
    # the cpu preset tuned for a few thousand images: more, smaller steps at a higher rate
    # (measured on the 3K demo: 12 epochs left seeds 0.62-0.75 apart on the same data; 18-20 converge)
    train_overrides: tuple[tuple[str, Any], ...] = (("epochs", 18), ("lr", 2e-3), ("batch_size", 32))
    folds: int = 3
    seeds: int = 1
    device: str = "auto"
    # a precision, not a probability: relabel only suggestions estimated right at least 9 times in 10
    auto_accept: float = 0.9


@dataclass
class StageReport:
    """One stage of the run: the version it wrote, what it did, and its score against the truth."""

    stage: str
    version: str | None
    summary: dict[str, Any]
    score: dict[str, Any]
    seconds: float


@dataclass
class DemoReport:
    """The whole run."""

    dest: Path
    workspace: Path
    stages: list[StageReport] = field(default_factory=list)
    steps: list[StepChange] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(
            self,
            seconds_digits=1,
            stages=[to_dict(s, seconds_digits=1) for s in self.stages],
            steps=[step.to_dict() for step in self.steps],
        )

    def render(self, console: Any) -> None:
        console.print(f"[bold]fercurate demo --run[/]: {self.seconds:.0f} s, workspace {self.workspace}")
        for s in self.stages:
            console.print(f"\n[bold cyan]{s.stage}[/] {s.version or ''} ({s.seconds:.0f} s)")
            if s.summary:
                console.print("  did:    " + _kv(s.summary), markup=False)
            if s.score:
                console.print("  scored: " + _kv(s.score), style="green", markup=False)
        if self.steps:
            console.print(f"\n[bold]Gold accuracy, step by step[/] ({self.steps[0].interval})")
            for step in self.steps:
                console.print("  " + step.line(), markup=False)
        console.print(f"\nReports (contact sheets, charts, the benchmark report): {self.workspace / 'reports'}")


def _kv(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        parts.append(f"{k} {v}")
    return "; ".join(parts)


def run_demo(workspace: Workspace, params: DemoRunParams, progress: Progress | None = None) -> DemoReport:
    """Generate the demo, run every stage on it, and score each against the ground truth."""
    from fercurate.affectnet import MergeParams, merge_affectnet
    from fercurate.benchmark import BenchmarkParams, benchmark
    from fercurate.dedup import DedupParams, dedup
    from fercurate.relabel.apply import ApplyParams, apply
    from fercurate.relabel.flag import FlagParams, flag
    from fercurate.scan import ScanParams, scan
    from fercurate.split import SplitParams, split

    progress = progress or NullProgress()
    started = time.perf_counter()
    dest = Path(params.dest)
    workspace_action = _clear_workspace(workspace, dest, params.overwrite)
    report = DemoReport(dest=dest, workspace=workspace.root)

    t = time.perf_counter()
    progress.start("Generating the demo dataset", None)
    demo = generate_demo(dest, params.demo, overwrite=params.overwrite)
    truth = pd.read_parquet(demo.truth_path)
    said = {"dataset": f"{demo.action} in {dest}", "workspace": workspace_action}
    report.stages.append(StageReport("demo", None, {**said, **demo.counts}, {}, time.perf_counter() - t))

    # -- scan -----------------------------------------------------------------------------------
    t = time.perf_counter()
    scanned = scan(workspace, ScanParams(dataset=demo.dataset_dir), progress)
    _, v0 = workspace.read(scanned.version.version)
    report.stages.append(
        StageReport(
            "scan",
            scanned.version.version,
            {"rows": scanned.rows, **{f"split {k}": v for k, v in sorted(scanned.by_split.items())}},
            score_scan(v0, truth),
            time.perf_counter() - t,
        )
    )

    # -- dedup ----------------------------------------------------------------------------------
    t = time.perf_counter()
    deduped = dedup(workspace, DedupParams(), progress)
    _, v1 = workspace.read(_written(deduped.version))
    report.stages.append(
        StageReport(
            "dedup",
            _written(deduped.version),
            {"removed": int((v1[Col.STATUS] == REMOVED).sum()), "groups": int(v1[Col.DUP_GROUP].nunique())},
            score_dedup(v1, truth),
            time.perf_counter() - t,
        )
    )

    # -- relabel-review -------------------------------------------------------------------------
    t = time.perf_counter()
    # flagging sizes its own training plan per preset (see relabel.flag)
    flagged = flag(workspace, FlagParams(folds=params.folds, preset=params.preset, device=params.device), progress)
    _, v2 = workspace.read(flagged.version.version)
    applied = apply(workspace, ApplyParams(version=flagged.version.version, auto_accept=params.auto_accept))
    _, v3 = workspace.read(applied.version.version)
    report.stages.append(
        StageReport(
            "relabel-review",
            f"{flagged.version.version}, {applied.version.version}",
            {
                "flagged": int(v2[Col.FLAGGED].fillna(False).astype(bool).sum()),
                "estimated wrong": flagged.estimated_wrong,
                "review budget": flagged.budget,
                f"auto-accepted at precision {params.auto_accept}": _changed_labels(v2, v3),
                "their expected precision": "-"
                if applied.auto_expected_precision is None
                else round(applied.auto_expected_precision, 3),
            },
            score_relabel(v2, v3, truth),
            time.perf_counter() - t,
        )
    )

    # -- split ----------------------------------------------------------------------------------
    t = time.perf_counter()
    resplit = split(workspace, SplitParams(seed=params.demo.seed, group_by=("related",)), progress)
    _, v4 = workspace.read(resplit.version.version)
    report.stages.append(
        StageReport(
            "split",
            resplit.version.version,
            {f"split {k}": v for k, v in _fractions(v4).items()},
            score_split(v4, truth),
            time.perf_counter() - t,
        )
    )

    # -- merge-affectnet ------------------------------------------------------------------------
    t = time.perf_counter()
    merged = merge_affectnet(
        workspace, MergeParams(source=demo.affectnet_dir, splits="train", seed=params.demo.seed), progress
    )
    _, v5 = workspace.read(_written(merged.version))
    report.stages.append(
        StageReport(
            "merge-affectnet",
            _written(merged.version),
            {"added": int((v5[Col.SOURCE] == SOURCE_AFFECTNET).sum())},
            score_merge(v4, v5),
            time.perf_counter() - t,
        )
    )

    # -- benchmark ------------------------------------------------------------------------------
    t = time.perf_counter()
    # the split version is left out of the comparison to keep the run short: its training data differ
    # from the merged version's only by the added AffectNet rows, and both are in the lineage report
    compared = (scanned.version.version, _written(deduped.version), applied.version.version, _written(merged.version))
    bench = benchmark(
        workspace,
        BenchmarkParams(
            versions=compared,
            seeds=params.seeds,
            preset=params.preset,
            overrides=params.train_overrides,
            device=params.device,
        ),
        progress,
    )
    first, last = bench.versions[0], bench.versions[-1]
    report.steps = step_changes(bench)
    report.stages.append(
        StageReport(
            "benchmark",
            f"{first.version}..{last.version}",
            {
                "gold images": bench.gold_size,
                **{f"{v.version} gold acc": round(v.gold_acc_mean, 3) for v in bench.versions},
                f"{first.version} inflation": round(first.leakage_inflation, 3),
            },
            {
                "gold acc change": report.steps[-1].text() if report.steps else "-",
                "report": str(bench.report_dir / "report.html"),
            },
            time.perf_counter() - t,
        )
    )
    report.seconds = time.perf_counter() - started
    return report


def _clear_workspace(workspace: Workspace, dest: Path, overwrite: bool) -> str:
    """Make ``workspace`` ready for a fresh run and say what was done with it.

    The demo's own workspace (``DEST/workspace`` beside an earlier demo) is replaced on a re-run, so
    the Quick start re-runs as written; its caches are kept, being keyed by what produced them, so
    the re-run decodes, hashes and trains only what changed. Any other workspace holding versions
    is replaced only with ``overwrite``.
    """
    if not workspace.versions():
        return "new"
    own = workspace.root.resolve() == (dest / "workspace").resolve() and demo_record(dest) is not None
    if not (own or overwrite):
        raise InputError(
            f"workspace {workspace.root} already holds versions and is not this demo's own; pass overwrite "
            "to start the demo afresh there, or choose another workspace",
            param=("overwrite", "workspace"),
        )
    with workspace.lock("fercurate demo --run", create=True):
        for entry in workspace.root.iterdir():
            if entry.name in ("cache", ".lock"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return "replaced (caches kept)"


def _written(version: VersionInfo | None) -> str:
    """The id of the version a stage wrote (the pipeline never runs a stage as a dry run)."""
    assert version is not None, "a pipeline stage ran as a dry run"
    return version.version


def _changed_labels(before: pd.DataFrame, after: pd.DataFrame) -> int:
    joined = before[[Col.IMAGE_ID, Col.LABEL]].merge(after[[Col.IMAGE_ID, Col.LABEL]], on=Col.IMAGE_ID)
    return int((joined[f"{Col.LABEL}_x"] != joined[f"{Col.LABEL}_y"]).sum())


def _fractions(df: pd.DataFrame) -> dict[str, str]:
    act = df[df[Col.STATUS] == ACTIVE]
    counts = act[Col.SPLIT].value_counts()
    return {
        s: f"{counts.get(s, 0)} ({100 * counts.get(s, 0) / max(1, len(act)):.1f}%)" for s in ("train", "val", "test")
    }


# -- scoring against the ground truth --------------------------------------------------------------
def _with_truth(df: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    # the demo's truth calls the split folder "validation"; the manifest path keeps it as written
    return df.merge(truth, left_on=Col.PATH, right_on=Truth.PATH, how="left", suffixes=("", "_truth"))


def _pr(found: set[Any], real: set[Any]) -> dict[str, float]:
    tp = len(found & real)
    return {
        "precision": tp / len(found) if found else 1.0,
        "recall": tp / len(real) if real else 1.0,
    }


def score_scan(df: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Invalid files found vs planted."""
    joined = _with_truth(df, truth)
    found = set(joined.loc[joined[Col.STATUS] == INVALID, Col.PATH])
    real = set(joined.loc[joined[Truth.INVALID_REASON].notna(), Col.PATH])
    pr = _pr(found, real)
    return {"invalid found": f"{len(found & real)}/{len(real)}", "invalid precision": pr["precision"]}


def score_dedup(df: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Planted duplicate pairs (copy, original) found in the same dup_group."""
    joined = _with_truth(df, truth)
    group_of = dict(zip(joined[Col.PATH], joined[Col.DUP_GROUP], strict=True))
    planted = joined[joined[Truth.DUP_OF].notna() & joined[Truth.INVALID_REASON].isna()]
    real_pairs = {tuple(sorted((p, o))) for p, o in zip(planted[Col.PATH], planted[Truth.DUP_OF], strict=True)}
    hit = {pair for pair in real_pairs if _same_group(group_of, *pair)}
    # precision: every pair of members of a found group should be a planted (transitive) duplicate
    root = {}
    for p, o in zip(planted[Col.PATH], planted[Truth.DUP_OF], strict=True):
        root[p] = o

    def origin(p: str) -> str:
        seen = 0
        while p in root and seen < 10:
            p, seen = root[p], seen + 1
        return p

    grouped = joined[joined[Col.DUP_GROUP].notna()]
    wrong = 0
    total = 0
    for _, members in grouped.groupby(Col.DUP_GROUP):
        origins = [origin(p) for p in members[Col.PATH]]
        total += len(origins) - 1
        wrong += len(origins) - max(pd.Series(origins).value_counts())
    leak_left = joined[(joined[Col.STATUS] == ACTIVE) & joined[Truth.DUP_OF].notna()]
    leak_left = leak_left[leak_left[Truth.DUP_OF].map(lambda o: _active(joined, o))]
    return {
        "pairs found": f"{len(hit)}/{len(real_pairs)}",
        "pair recall": len(hit) / max(1, len(real_pairs)),
        "group precision": 1 - wrong / max(1, total),
        "planted copies still active beside original": len(leak_left),
        **_recall_per_kind(planted, group_of),
        **_bursts_joined(joined, group_of),
    }


def _recall_per_kind(planted: pd.DataFrame, group_of: dict[str, Any]) -> dict[str, str]:
    """Pairs found per kind of copy (exact, near, recrop, watermark, tone), as found/planted."""
    out = {}
    for kind, part in planted.groupby(Truth.COPY_KIND, sort=True):
        found = sum(_same_group(group_of, p, o) for p, o in zip(part[Col.PATH], part[Truth.DUP_OF], strict=True))
        out[f"recall {kind}"] = f"{found}/{len(part)}"
    return out


def _bursts_joined(joined: pd.DataFrame, group_of: dict[str, Any]) -> dict[str, Any]:
    """Burst frames (same face, another expression) that dedup wrongly put in their frame's group, and
    the others that it linked as related frames (one ``related_group``); the related groups' precision:
    members that come from another sitting (neither a copy nor a burst frame of the group's main one)."""
    if Truth.BURST_OF not in joined.columns:
        return {}
    bursts = joined[joined[Truth.BURST_OF].notna() & joined[Truth.INVALID_REASON].isna()]
    pairs = list(zip(bursts[Col.PATH], bursts[Truth.BURST_OF], strict=True))
    joined_pairs = [pair for pair in pairs if _same_group(group_of, *pair)]
    out: dict[str, Any] = {"burst pairs joined (false pairs)": f"{len(joined_pairs)}/{len(bursts)}"}
    if Col.RELATED_GROUP not in joined.columns:
        return out
    related_of = dict(zip(joined[Col.PATH], joined[Col.RELATED_GROUP], strict=True))
    rest = [pair for pair in pairs if not _same_group(group_of, *pair)]
    linked = sum(_same_group(related_of, *pair) for pair in rest)
    out["burst pairs linked as related"] = f"{linked}/{len(rest)}"
    # a sitting: follow dup_of and burst_of to the frame everything of it was made from
    parent = {
        p: (d if isinstance(d, str) else b)
        for p, d, b in zip(joined[Col.PATH], joined[Truth.DUP_OF], joined[Truth.BURST_OF], strict=True)
        if isinstance(d, str) or isinstance(b, str)
    }

    def sitting(p: str) -> str:
        for _ in range(10):
            if p not in parent:
                break
            p = parent[p]
        return p

    wrong = total = 0
    for _, members in joined[joined[Col.RELATED_GROUP].notna()].groupby(Col.RELATED_GROUP):
        sittings = pd.Series([sitting(p) for p in members[Col.PATH]])
        total += len(sittings) - 1
        wrong += len(sittings) - int(sittings.value_counts().max())
    out["related group precision"] = round(1 - wrong / max(1, total), 3)
    return out


def _same_group(group_of: dict[str, Any], a: str, b: str) -> bool:
    ga, gb = group_of.get(a), group_of.get(b)
    return ga is not None and not pd.isna(ga) and ga == gb


def _active(joined: pd.DataFrame, path: str) -> bool:
    row = joined[joined[Col.PATH] == path]
    return bool(len(row)) and row[Col.STATUS].iloc[0] == ACTIVE


def score_relabel(flagged: pd.DataFrame, applied: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Flags vs planted mislabels, and label accuracy of active rows before and after applying."""
    jf = _with_truth(flagged, truth)
    act = jf[(jf[Col.STATUS] == ACTIVE) & jf[Truth.TRUE_LABEL].notna()]
    found = set(act.loc[act[Col.FLAGGED].fillna(False).astype(bool), Col.PATH])
    real = set(act.loc[act[Truth.MISLABELED].fillna(False).astype(bool), Col.PATH])
    pr = _pr(found, real)
    ja = _with_truth(applied, truth)
    aa = ja[(ja[Col.STATUS] == ACTIVE) & ja[Truth.TRUE_LABEL].notna()]
    # the relabels themselves, judged by the truth: fixed (now right) and broken (was right, now not)
    after = aa[[Col.PATH, Col.LABEL]]
    both = act[[Col.PATH, Col.LABEL, Truth.TRUE_LABEL]].merge(after, on=Col.PATH, suffixes=("", "_after"))
    changed = both[both[Col.LABEL] != both[f"{Col.LABEL}_after"]]
    fixed = int((changed[f"{Col.LABEL}_after"] == changed[Truth.TRUE_LABEL]).sum())
    broken = int((changed[Col.LABEL] == changed[Truth.TRUE_LABEL]).sum())
    return {
        "flag precision": pr["precision"],
        "flag recall": pr["recall"],
        "label accuracy before": float((act[Col.LABEL] == act[Truth.TRUE_LABEL]).mean()),
        "label accuracy after": float((aa[Col.LABEL] == aa[Truth.TRUE_LABEL]).mean()),
        "relabels fixed / broken": f"{fixed} / {broken}",
        "relabel precision (truth)": fixed / len(changed) if len(changed) else "-",
    }


def score_split(df: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Class balance across splits and duplicate groups kept in one split."""
    act = df[df[Col.STATUS] == ACTIVE]
    whole = act[Col.LABEL].value_counts(normalize=True)
    worst = 0.0
    for _, part in act.groupby(Col.SPLIT):
        share = part[Col.LABEL].value_counts(normalize=True).reindex(whole.index, fill_value=0)
        worst = max(worst, float((share - whole).abs().max()) * 100)
    spanning = 0
    if Col.DUP_GROUP in df.columns:
        g = df[df[Col.DUP_GROUP].notna() & (df[Col.STATUS] == ACTIVE)].groupby(Col.DUP_GROUP)[Col.SPLIT].nunique()
        spanning = int((g > 1).sum())
    related_spanning = 0
    if Col.RELATED_GROUP in df.columns:
        active = df[df[Col.RELATED_GROUP].notna() & (df[Col.STATUS] == ACTIVE)]
        related_spanning = int((active.groupby(Col.RELATED_GROUP)[Col.SPLIT].nunique() > 1).sum())
    joined = _with_truth(act, truth)
    planted = joined[joined[Truth.DUP_OF].notna()]
    split_of = dict(zip(joined[Col.PATH], joined[Col.SPLIT], strict=True))
    cross = sum(
        1
        for p, o in zip(planted[Col.PATH], planted[Truth.DUP_OF], strict=True)
        if o in split_of and split_of[o] != split_of[p]
    )
    return {
        "max class-share deviation (pp)": round(worst, 2),
        "dup groups spanning splits": spanning,
        "related groups spanning splits": related_spanning,
        "planted duplicate pairs across splits": cross,
    }


def score_merge(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Class shares before and after balancing."""

    def shares(df: pd.DataFrame) -> pd.Series:
        return df.loc[df[Col.STATUS] == ACTIVE, Col.LABEL].value_counts(normalize=True) * 100

    b, a = shares(before), shares(after)
    return {
        "rarest class share before (%)": round(float(b.min()), 1),
        "rarest class share after (%)": round(float(a.min()), 1),
        "max distance from equal share after (pp)": round(float((a - 100 / len(a)).abs().max()), 1),
    }


# -- the summary: each step's change, with its interval ----------------------------------------------
@dataclass(frozen=True)
class StepChange:
    """The change in gold accuracy from one benchmarked version to the next (or first to last).

    Attributes:
        step: what changed, e.g. ``"dedup (v0000 -> v0001)"``.
        delta: mean change in gold accuracy (fraction; +0.01 is one point).
        low, high: its 95% interval.
        interval: how the interval was computed (paired bootstrap over the gold images, seeds).
    """

    step: str
    delta: float
    low: float
    high: float
    interval: str

    @property
    def verdict(self) -> str:
        """``raised`` / ``lowered`` when the whole interval is on one side of zero, else ``within noise``."""
        return change_verdict(self.low, self.high)

    def text(self) -> str:
        return f"{self.delta * 100:+.1f} points [{self.low * 100:+.1f}, {self.high * 100:+.1f}], {self.verdict}"

    def line(self) -> str:
        return f"{self.step}: {self.text()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "delta": round(self.delta, 4),
            "ci": [round(self.low, 4), round(self.high, 4)],
            "verdict": self.verdict,
            "interval": self.interval,
        }


def change_verdict(low: float, high: float) -> str:
    """Name a change by its interval: never "helped" from a mean alone."""
    if low > 0:
        return "raised"
    if high < 0:
        return "lowered"
    return "within noise"


def step_changes(bench: Any) -> list[StepChange]:
    """Each benchmarked step's change in gold accuracy, then the whole run's, each with its interval.

    The intervals are the benchmark's paired bootstrap over the gold images (per-image correctness
    averaged over the seeds, images resampled jointly for both versions), so they hold with one seed
    too; the first-to-last interval is computed the same way from the benchmark's ``gold.parquet``.
    """
    from fercurate.benchmark import bootstrap_delta

    seeds = f"{bench.seeds} seed{'s' if bench.seeds != 1 else ''}"
    interval = f"95% paired bootstrap over {bench.gold_size} gold images, {seeds}"
    out = []
    versions = bench.versions
    for prev, cur in zip(versions, versions[1:], strict=False):
        if cur.delta_vs_previous is None or cur.delta_ci is None:
            continue
        out.append(
            StepChange(
                f"{cur.stage} ({prev.version} -> {cur.version})",
                cur.delta_vs_previous,
                cur.delta_ci[0],
                cur.delta_ci[1],
                interval,
            )
        )
    if len(versions) > 2:
        gold = pd.read_parquet(bench.report_dir / "gold.parquet")
        first, last = versions[0].version, versions[-1].version
        delta, low, high = bootstrap_delta(gold[f"correct_{first}"].to_numpy(), gold[f"correct_{last}"].to_numpy())
        out.append(StepChange(f"all steps ({first} -> {last})", delta, low, high, interval))
    return out


__all__ = ["DemoReport", "DemoRunParams", "StepChange", "change_verdict", "run_demo", "step_changes"]
