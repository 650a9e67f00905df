"""Take a real FER set through the fercurate pipeline as a user would, time each stage, score it.

Usage::

    python bench/real/run.py /tmp/real/sets/fer4 --work /tmp/realdata/fer4 --truth /tmp/real/sets/truth
    python bench/real/run.py /tmp/real/sets/fer4 --work /tmp/realdata/fer4 --stages flag,split,benchmark
    python bench/real/run.py /tmp/real/sets/fer4 --work /tmp/realdata/fer4 --stages none   # rescore only

Each stage runs the ``fercurate`` console script next to this interpreter with ``--json``, in the
workspace ``WORK/ws``, in pipeline order: ``scan SET``, ``dedup --mirror``, ``relabel-review flag``,
``split``, ``benchmark --preset cpu --seeds 1`` (every version in the lineage; versions with the same
training rows reuse one model). Its command, JSON answer, wall and CPU seconds (the child's user +
system time) and the load average before and after are kept in ``WORK/stages/<stage>.json``, so
stages can be run one call at a time (``--stages``) and scored together. Other options of a stage go
after ``--``, e.g. ``-- --preset tiny`` (given to every stage run in that call).

Scoring, with the truth tables of ``bench/real/prepare.py`` (``--truth``; a missing table is noted
and its scores skipped):

- dedup against ``same_photo_pairs.csv`` (columns ``a``, ``b``: paths relative to the FER2013 root,
  ``kind``, optionally ``similarity`` or ``ncc``): precision and recall of pairs, per kind and per
  similarity band;
- flag against ``ferplus_votes.csv``: an image is mislabelled when at least 6 of its 10 FER+
  annotators agree on a class other than its given label. Out-of-fold accuracy (argmax of the
  version's ``prob_<class>`` columns against the given label), precision at 100 / 500 / 1000 of the
  review queue (flagged rows by ``mislabel_score``), and the flag set's precision, recall and F1;
  then cleanlab's ``find_label_issues`` on the same probabilities (ranked by self-confidence);
- benchmark: gold accuracy and training accuracy per version, seconds per trained model.

Writes ``WORK/figures.json`` and ``WORK/figures.md`` (one table: stage, figure, value, command, rows).
Set paths are mapped to FER2013 paths with ``TRUTH/<set name>_index.csv`` when it exists (fer4), and
taken as they are otherwise (fer7 is the Kaggle folder itself).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scoring  # noqa: E402  (a sibling file, not a package)

STAGES = ("scan", "dedup", "flag", "split", "benchmark")
STAGE_ARGS = {
    "dedup": ["dedup", "--mirror"],
    "flag": ["relabel-review", "flag"],
    "split": ["split"],
    "benchmark": ["benchmark", "--preset", "cpu", "--seeds", "1"],
}
PRECISION_AT = (100, 500, 1000)


class RunError(Exception):
    """A bad path, option or a failed stage: printed as one line, exit 1."""


def fercurate_bin() -> str:
    """The ``fercurate`` console script installed beside this interpreter."""
    path = Path(sys.executable).parent / "fercurate"
    if not path.exists():
        raise RunError(f"{path} is missing; run with the interpreter of the environment where fercurate is installed")
    return str(path)


def run_stage(stage: str, set_dir: Path, ws: Path, extra: list[str], log_dir: Path) -> dict:
    """Run one stage as a child process; return its record (command, JSON answer, timings)."""
    args = ["scan", str(set_dir)] if stage == "scan" else list(STAGE_ARGS[stage])
    cmd = [fercurate_bin(), *args, "--workspace", str(ws), "--json", *extra]
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (log_dir / f"{stage}.stderr").open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (log_dir / f"{stage}.stderr").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RunError(f"stage {stage} failed (exit {proc.returncode}): {tail[0]}; see {log_dir / (stage + '.stderr')}")
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    return {
        "stage": stage,
        "command": shlex.join(["fercurate", *args, "--workspace", str(ws), "--json", *extra]),
        "result": json.loads(proc.stdout),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- reading what the stages wrote -------------------------------------------------------------------
def read_version(ws: Path, version: str) -> pd.DataFrame:
    return pd.read_parquet(ws / "versions" / f"{version}.parquet")


def source_paths(frame: pd.DataFrame, index: pd.DataFrame | None) -> pd.Series:
    """Each row's image as a path relative to the FER2013 root (the truth tables' key)."""
    if index is None:
        return frame["path"]
    mapping = dict(zip(index["path"], index["source"], strict=True))
    return frame["path"].map(mapping)


def dedup_figures(rec: dict, ws: Path, truth_dir: Path | None, index: pd.DataFrame | None) -> tuple[dict, list[str]]:
    res = rec["result"]
    fig = {"pairs": res["pairs"], "pairs_by_kind": res["pairs_by_kind"], "removed": res["removed"]}
    fig["leakage_groups"] = sum(x["groups"] for x in res.get("leakage", []))
    notes = []
    truth_path = truth_dir / "same_photo_pairs.csv" if truth_dir else None
    if truth_path is None or not truth_path.exists():
        return fig, [f"dedup not scored: {truth_path or '--truth'} is missing (built by the recrop work)"]
    frame = read_version(ws, res["version"])
    src = dict(zip(frame["image_id"], source_paths(frame, index), strict=True))
    pairs = pd.read_parquet(ws / "reports" / res["version"] / "dedup_pairs.parquet")
    found = pd.DataFrame({"a": pairs["image_id_a"].map(src), "b": pairs["image_id_b"].map(src), "kind": pairs["kind"]})
    truth = pd.read_csv(truth_path)
    if "similarity" not in truth.columns and "ncc" in truth.columns:
        truth = truth.rename(columns={"ncc": "similarity"})  # the pair's best NCC over scale and shift
    # the truth covers some FER2013 folders (e.g. train/ only: tuning rows); score pairs within them
    covered = sorted(set(truth["a"].str.split("/").str[0]) | set(truth["b"].str.split("/").str[0]))
    universe = {p for p in src.values() if isinstance(p, str) and p.split("/")[0] in covered}
    fig["vs_truth"] = scoring.pair_scores(found, truth, universe)
    fig["vs_truth"]["scored_images"] = len(universe)
    fig["vs_truth"]["covered_folders"] = covered
    where = ", ".join(f"{c}/" for c in covered)
    notes.append(f"dedup scored on the {len(universe)} images under FER2013 folder(s) {where} (the truth's cover)")
    return fig, notes


def flag_figures(rec: dict, ws: Path, truth_dir: Path | None, index: pd.DataFrame | None) -> tuple[dict, list[str]]:
    res = rec["result"]
    frame = read_version(ws, res["version"])
    frame = frame[frame["status"] == "active"].reset_index(drop=True)
    classes = res["classes"]
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    labels = np.array([classes.index(c) for c in frame["label"]])
    fig: dict = {
        "rows": len(frame),
        "oof_accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "flagged": int(frame["flagged"].fillna(False).astype(bool).sum()),
    }
    votes_path = truth_dir / "ferplus_votes.csv" if truth_dir else None
    if votes_path is None or not votes_path.exists():
        return fig, [f"flag not scored against FER+: {votes_path or '--truth'} is missing (prepare.py --only votes)"]
    votes = pd.read_csv(votes_path).set_index("source")
    frame["source"] = source_paths(frame, index)
    have = frame["source"].isin(votes.index).to_numpy()
    sub = frame[have].reset_index(drop=True)
    annot = scoring.annotator_class(votes.loc[sub["source"]].reset_index(drop=True))
    wrong = scoring.mislabelled(list(sub["label"]), list(annot))
    flagged = sub["flagged"].fillna(False).astype(bool).to_numpy()
    order = np.lexsort((sub["image_id"].to_numpy(), -sub["mislabel_score"].fillna(-np.inf).to_numpy()))
    queue = order[flagged[order]]
    fig["scored_rows"] = int(len(sub))
    fig["rows_without_votes"] = int((~have).sum())
    fig["mislabelled_by_ferplus"] = int(wrong.sum())
    fig["precision_at"] = scoring.precision_at(wrong[queue], PRECISION_AT)
    fig["flag_set"] = scoring.set_scores(flagged, wrong)
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return fig, ["cleanlab not installed: no comparison"]
    sub_probs, sub_labels = probs[have], labels[have]
    ranked = find_label_issues(sub_labels, sub_probs, return_indices_ranked_by="self_confidence")
    mask = np.zeros(len(sub), dtype=bool)
    mask[ranked] = True
    fig["cleanlab"] = {
        "flagged": int(mask.sum()),
        "precision_at": scoring.precision_at(wrong[ranked], PRECISION_AT),
        "flag_set": scoring.set_scores(mask, wrong),
    }
    return fig, []


def benchmark_figures(rec: dict, ws: Path) -> tuple[dict, list[str]]:
    res = rec["result"]
    runs = pd.read_parquet(Path(res["report_dir"]) / "runs.parquet")
    trained = runs.drop_duplicates("data_key")
    per_version = {
        v["version"]: {
            "stage": v["stage"],
            "gold_acc": v["gold_acc_mean"],
            "train_acc": v["train_acc_mean"],
            "val_acc": v["val_acc_mean"],
            "n_train": v["n_train"],
            "same_data_as": v.get("same_data_as"),
        }
        for v in res["versions"]
    }
    fig = {
        "gold_size": res["gold_size"],
        "versions": per_version,
        "models_trained": int(len(trained)),
        "seconds": res["seconds"],
        "seconds_per_model": round(rec["wall_s"] / max(len(trained), 1), 1),
        "epochs": [int(e) for e in trained["epochs"]],
    }
    return fig, ["seconds_per_model is the stage's wall time over distinct models (gold set and loading included)"]


# -- the table -------------------------------------------------------------------------------------
def fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def table_rows(records: dict[str, dict], figures: dict[str, dict]) -> list[dict]:
    """Flatten the figures into rows: stage, figure, value, command, rows, timing."""
    out = []

    def add(stage: str, name: str, value: object, rows: object) -> None:
        rec = records[stage]
        out.append({"stage": stage, "figure": name, "value": value, "rows": rows, "command": rec["command"]})

    for stage, rec in records.items():
        fig = figures.get(stage, {})
        load = rec["loadavg_before"][0]
        timing = f"{rec['wall_s']} s wall, {rec['cpu_s']} s CPU, load {load}"
        if stage == "scan":
            res = rec["result"]
            add(stage, "time", timing, res["rows"])
            add(stage, "invalid", res["by_status"].get("invalid", 0), res["rows"])
        elif stage == "dedup":
            res = rec["result"]
            add(stage, "time", timing, res["active"])
            add(stage, "pairs (exact/near/mirror/...)", f"{fig['pairs']} {fig['pairs_by_kind']}", res["active"])
            add(stage, "removed", fig["removed"], res["active"])
            add(stage, "groups across splits", fig["leakage_groups"], res["active"])
            vt = fig.get("vs_truth")
            if vt:
                pr = f"{fmt(vt['precision'])} / {fmt(vt['recall'])}"
                rows = f"{vt['scored_images']} images: {vt['found_pairs']} found, {vt['truth_pairs']} true pairs"
                add(stage, "pair precision / recall", pr, rows)
                for k, v in vt["recall_by_kind"].items():
                    add(stage, f"recall, kind {k}", fmt(v["value"]), v["n"])
                for k, v in vt["recall_by_band"].items():
                    add(stage, f"recall, similarity {k}", fmt(v["value"]), v["n"])
                for k, v in vt["precision_by_kind"].items():
                    add(stage, f"precision, reported {k}", fmt(v["value"]), v["n"])
        elif stage == "flag":
            add(stage, "time", timing, fig["rows"])
            add(stage, "out-of-fold accuracy", fmt(fig["oof_accuracy"]), fig["rows"])
            add(stage, "flagged", fig["flagged"], fig["rows"])
            if "precision_at" in fig:
                n = fig["scored_rows"]
                add(stage, "mislabelled by FER+ (>= 6/10 agree elsewhere)", fig["mislabelled_by_ferplus"], n)
                p = fig["precision_at"]
                add(stage, "precision at 100 / 500 / 1000", " / ".join(fmt(p[k]) for k in PRECISION_AT), n)
                s = fig["flag_set"]
                add(stage, "flag set P / R / F1", f"{fmt(s['precision'])} / {fmt(s['recall'])} / {fmt(s['f1'])}", n)
            if "cleanlab" in fig:
                c = fig["cleanlab"]
                p, s = c["precision_at"], c["flag_set"]
                add(stage, "cleanlab flagged", c["flagged"], fig["scored_rows"])
                add(stage, "cleanlab precision at 100 / 500 / 1000", " / ".join(fmt(p[k]) for k in PRECISION_AT), n)
                add(stage, "cleanlab P / R / F1", f"{fmt(s['precision'])} / {fmt(s['recall'])} / {fmt(s['f1'])}", n)
        elif stage == "split":
            res = rec["result"]
            add(stage, "time", timing, res["rows_active"])
            add(
                stage,
                "rows moved / largest class-share deviation (pp)",
                f"{res['moved']} / {res['max_deviation_pp']}",
                res["rows_active"],
            )
        elif stage == "benchmark":
            add(stage, "time", timing, "")
            add(stage, "seconds per trained model", fig["seconds_per_model"], f"{fig['models_trained']} models")
            for v, s in fig["versions"].items():
                rows = f"train {s['n_train']}, gold {fig['gold_size']}"
                acc = f"{fmt(s['gold_acc'])} / {fmt(s['train_acc'])}"
                add(stage, f"{v} ({s['stage']}) gold / train accuracy", acc, rows)
    return out


def markdown(rows: list[dict], notes: list[str], set_dir: Path) -> str:
    lines = [f"# Figures on {set_dir}", "", "| stage | figure | value | rows | command |", "|---|---|---|---|---|"]
    for r in rows:
        value = str(r["value"]).replace("|", "/")
        lines.append(f"| {r['stage']} | {r['figure']} | {value} | {r['rows']} | `{r['command']}` |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir", type=Path, help="dataset folder, e.g. /tmp/real/sets/fer4")
    parser.add_argument("--work", type=Path, required=True, help="work folder: workspace, stage records, figures")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, or none")
    parser.add_argument("--truth", type=Path, help="truth tables folder (prepare.py's OUT/truth)")
    parser.epilog = "Options after -- go to every stage run in this call (e.g. -- --preset tiny)."
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    try:
        stages = [s for s in args.stages.split(",") if s and s != "none"]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise RunError(f"--stages {','.join(bad)} is not one of: {', '.join(STAGES)} (or none)")
        if not args.set_dir.is_dir():
            raise RunError(f"{args.set_dir} is not a folder; pass a set built by bench/real/prepare.py")
        if args.truth is not None and not args.truth.is_dir():
            raise RunError(f"--truth {args.truth} is not a folder; pass prepare.py's OUT/truth")
        ws, log_dir = args.work / "ws", args.work / "stages"
        log_dir.mkdir(parents=True, exist_ok=True)
        if "scan" in stages and ws.exists():
            raise RunError(f"{ws} already exists; pass a fresh --work to scan again, or leave scan out of --stages")
        for stage in STAGES:
            if stage in stages:
                rec = run_stage(stage, args.set_dir, ws, extra, log_dir)
                write_atomic(log_dir / f"{stage}.json", json.dumps(rec, indent=2))
                timing = f"{rec['wall_s']} s wall, {rec['cpu_s']} s CPU, load {rec['loadavg_before']}"
                print(f"{stage}: {timing}", flush=True)
        saved = [s for s in STAGES if (log_dir / f"{s}.json").exists()]
        records = {s: json.loads((log_dir / f"{s}.json").read_text()) for s in saved}
        index_path = args.truth / f"{args.set_dir.name}_index.csv" if args.truth else None
        index = pd.read_csv(index_path) if index_path and index_path.exists() else None
        figures: dict[str, dict] = {}
        notes: list[str] = []
        for stage, rec in records.items():
            if stage == "dedup":
                figures[stage], more = dedup_figures(rec, ws, args.truth, index)
            elif stage == "flag":
                figures[stage], more = flag_figures(rec, ws, args.truth, index)
            elif stage == "benchmark":
                figures[stage], more = benchmark_figures(rec, ws)
            else:
                continue
            notes += more
        rows = table_rows(records, figures)
        doc = {"set": str(args.set_dir), "records": records, "figures": figures, "table": rows, "notes": notes}
        write_atomic(args.work / "figures.json", json.dumps(doc, indent=2, default=str))
        write_atomic(args.work / "figures.md", markdown(rows, notes, args.set_dir))
        print((args.work / "figures.md").read_text())
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
