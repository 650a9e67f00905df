"""Walk the README's Quick start twice from a fresh clone, as a new user would, and check the first hour.

python bench/bench_quickstart.py                                # clone into $TMPDIR/fercurate-quickstart/clone
python bench/bench_quickstart.py --work /tmp/qs --reuse-venv    # keep the clone's venv between tries

Steps, each failing the script (exit 1) if it regressed:

1. ``git clone`` of this checkout, a fresh virtual environment, ``pip install torch==2.13.0 -e .``
   (the Quick start's first line, split at ``&&``).
2. ``fercurate demo demo --run`` twice, output to a file (not a terminal): both exit 0; each long
   phase prints a start and an end line with its time; the second run says it reused the demo and
   replaced its workspace, and gives the same benchmark figures.
3. The first-hour cases on the demo's workspace: a second ``scan`` refused with one line unless
   ``--new-lineage`` and ``log`` then showing two lineages; a scan of only invalid files stopping
   with one line and writing nothing; ``export --format csv DEST.csv`` writing that file; exported
   folders and files readable by others (0755/0644 under umask 022); a non-demo folder refused by
   ``demo``; the docs pages for scan, log, diff and export present.
4. The fast cases' unit tests (progress clocks, export modes, lineage, demo reuse) in the clone.

Prints wall and CPU seconds of each demo run with the load average, and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def run(cmd: str, cwd: Path, env: dict[str, str], log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a shell, output captured (so never a terminal), optionally copied to ``log``."""
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, text=True, capture_output=True)
    if log is not None:
        log.write_text(f"$ {cmd}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", encoding="utf-8")
    return proc


def timed(cmd: str, cwd: Path, env: dict[str, str], log: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = Path("/proc/loadavg").read_text().split()[:3]
    started = time.perf_counter()
    proc = run(cmd, cwd, env, log)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu, 1), "loadavg_before": load}
    print(f"      {cmd}: {figures}", flush=True)
    return proc, figures


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line, which must be the one error line."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fercurate-quickstart")
    parser.add_argument("--reuse-venv", action="store_true", help="keep WORK/clone/.venv if it exists")
    args = parser.parse_args()
    work: Path = args.work
    clone = work / "clone"
    logs = work / "logs"
    venv = clone / ".venv"
    kept_venv = work / "kept-venv"
    if args.reuse_venv and venv.is_dir():
        shutil.rmtree(kept_venv, ignore_errors=True)
        venv.rename(kept_venv)
    shutil.rmtree(clone, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    os.umask(0o022)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FERCURATE_WORKSPACE")}

    # 1. a fresh clone and the Quick start's install
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if kept_venv.is_dir():
        kept_venv.rename(venv)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    proc, install = timed("pip install -q torch==2.13.0 -e .", clone, env, logs / "install.log")
    check(proc.returncode == 0, "pip install torch==2.13.0 -e . in a fresh venv")
    if proc.returncode:
        finish({"install": install})

    # 2. the Quick start's first command, twice, with output to a file
    runs = []
    for attempt in (1, 2):
        proc, figures = timed("fercurate demo demo --run", clone, env, logs / f"demo-run-{attempt}.log")
        runs.append(figures)
        check(proc.returncode == 0, f"demo --run, run {attempt}: exit 0 ({error_line(proc)[:160]})")
        phase_lines = [line for line in proc.stderr.splitlines() if ": done (" in line]
        check(len(phase_lines) >= 5, f"demo --run, run {attempt}: a line per phase end off a terminal")
        figures["stdout"] = proc.stdout
    check("reused" in runs[1]["stdout"], "second run says it reused the demo dataset")
    check("replaced (caches kept)" in runs[1]["stdout"], "second run says it replaced its own workspace")
    gold = [[line for line in r.pop("stdout").splitlines() if "gold acc" in line] for r in runs]
    check(gold[0] == gold[1] and bool(gold[0]), "both runs give the same benchmark figures")

    # 3. the first-hour cases on the demo's workspace
    ws = "-w demo/workspace"
    proc = run(f"fercurate scan demo/dataset {ws}", clone, env)
    check(proc.returncode == 1 and "--new-lineage" in error_line(proc), "a second scan is refused in one line")
    proc = run(f"fercurate scan demo/dataset {ws} --new-lineage && fercurate log {ws} --json", clone, env)
    logged = json.loads(proc.stdout[proc.stdout.index("[") :]) if proc.returncode == 0 else []
    lineages = {e["lineage"] for e in logged}
    check(len(lineages) == 2, "scan --new-lineage starts a second lineage that log shows")
    bad = clone / "bad" / "train" / "happy"
    bad.mkdir(parents=True)
    for k in range(3):
        (bad / f"{k}.jpg").write_bytes(b"no image here\n")
    proc = run("fercurate scan bad -w bad-ws", clone, env)
    check(
        proc.returncode == 1 and "all 3 files" in error_line(proc) and not (clone / "bad-ws").exists(),
        "a scan of only invalid files: one line naming the count and reasons, nothing written",
    )
    proc = run(f"fercurate export latest cleaned.csv --format csv {ws}", clone, env)
    check(proc.returncode == 0 and (clone / "cleaned.csv").is_file(), "export --format csv DEST.csv writes that file")
    proc = run(f"fercurate export latest cleaned {ws}", clone, env)
    folders = [clone / "cleaned", *(p for p in (clone / "cleaned").rglob("*") if p.is_dir())]
    reports = [p for p in (clone / "demo" / "workspace" / "reports").rglob("*") if p.is_file()]
    check(
        proc.returncode == 0 and {p.stat().st_mode & 0o777 for p in folders} == {0o755},
        "exported folders are 0755 under umask 022",
    )
    check(
        (clone / "cleaned.csv").stat().st_mode & 0o777 == 0o644
        and bool(reports)
        and {p.stat().st_mode & 0o777 for p in reports} == {0o644},
        "the CSV and every report file are 0644 under umask 022",
    )
    mine = clone / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    proc = run("fercurate demo mine", clone, env)
    check(proc.returncode == 1 and "no fercurate demo" in error_line(proc), "demo refuses a folder holding no demo")
    for page in ("scan", "log", "diff", "export", "benchmark", "demo"):
        check((clone / "docs" / f"{page}.md").is_file(), f"docs/{page}.md exists")
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (clone / "docs").glob("*.md"))
    check("PYTHONPATH" not in docs, "no doc sets PYTHONPATH")

    # 4. the fast cases as unit tests, in the clone
    proc = run(
        "pip install -q -e '.[test]' && python -m pytest -q -p no:cacheprovider "
        "tests/test_cli.py tests/test_history_export.py tests/test_scan.py "
        "-k 'lineage or invalid or unknown or phase or csv or umask or refusal'",
        clone,
        env,
        logs / "tests.log",
    )
    check(proc.returncode == 0, "the first-hour unit tests pass in the clone")
    finish({"install": install, "demo_runs": runs})


def finish(figures: dict) -> None:
    print(json.dumps({"failures": FAILURES, **figures}, indent=2))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
