from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fercurate.cli import app

runner = CliRunner()


def all_commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(root, ())
    return found


def test_the_foundation_commands_are_registered() -> None:
    names = {c[0] for c in all_commands()}
    assert {"scan", "log", "diff", "export", "demo"} <= names


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example: fercurate" in result.output, f"{' '.join(path)} --help shows no example"


def test_cli_json_outputs_parse(tree, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    res = runner.invoke(app, ["scan", str(tree[0]), "-w", ws, "--json"])
    assert res.exit_code == 0, res.output
    scanned = json.loads(res.stdout)
    assert scanned["version"] == "v0000" and scanned["by_status"]["invalid"] == 6
    res = runner.invoke(app, ["log", "--json"], env={"FERCURATE_WORKSPACE": ws})
    entries = json.loads(res.stdout)
    assert entries[0]["path"].endswith("v0000.parquet") and entries[0]["rows"] == scanned["rows"]
    res = runner.invoke(app, ["diff", "v0000", "v0000", "-w", ws, "--json"])
    assert json.loads(res.stdout)["relabels"] == {}
    res = runner.invoke(app, ["export", "latest", str(tmp_path / "out"), "-w", ws, "--json"])
    assert json.loads(res.stdout)["files"] == scanned["by_status"]["active"]
    res = runner.invoke(app, ["log", "-w", ws])
    assert "v0000" in res.output and "scan" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["log"], "run `fercurate scan DATASET` first"),
        (["scan", "/definitely/not/here"], "does not exist"),
        (["diff", "v0007"], "run `fercurate scan DATASET` first"),
    ],
)
def test_user_errors_are_one_red_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def test_help_and_light_commands_do_not_import_torch(tree, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fercurate.cli import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        f"assert r.invoke(app, ['scan', {str(tree[0])!r}, '-w', {str(tmp_path / 'w')!r}]).exit_code == 0\n"
        f"assert r.invoke(app, ['log', '-w', {str(tmp_path / 'w')!r}]).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "fercurate", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("fercurate ")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_keeps_freed_blocks_for_reuse() -> None:
    # temporaries of growing size (256 KB to 4 MB, below numpy's huge-page size), each made and
    # freed: by default each is above the threshold the previous free raised, so it is mapped afresh
    # and all its pages fault in (about 120,000 faults); tuned, they reuse the heap (about 1,000)
    code = (
        "import resource, sys, numpy as np\n"
        "from fercurate.cli import tune_allocator\n"
        "if sys.argv[1] == 'tuned': assert tune_allocator()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for kb in range(256, 4000, 16): np.ones(kb << 7).sum()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True).stdout)
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 50_000 and faults["tuned"] < 10_000, faults


#: Options that are not a field of the command's params classes: the shared ones, switches that pick
#: what runs, overrides that go into a nested config, and a preset of other options' values
#: (``dedup --photos`` sets --max-zoom and --max-residual).
NOT_PARAMS = {"workspace", "as_json", "version_flag"}
CLI_ONLY = {"demo": {"run", "dest"}, "benchmark": {"epochs"}, "dedup": {"photos"}}


def _as_params(value: object, default: object) -> object:
    """A CLI default in the type of its params field (text lists and ratios are parsed as the command does)."""
    from fercurate.affectnet import parse_mapping
    from fercurate.split import parse_ratios

    if isinstance(default, tuple) and isinstance(value, str):
        return parse_ratios(value) if "/" in value else tuple(value.split(","))
    if isinstance(default, tuple) and value is None:
        return ()
    if isinstance(value, list):
        return tuple(value)
    if isinstance(default, dict) or (value is not None and isinstance(value, str) and "=" in value):
        return parse_mapping(value) or None
    return value


def test_every_option_default_is_its_params_default() -> None:
    import dataclasses

    from fercurate.cli import PARAMS_OF

    root = typer.main.get_command(app)
    checked = 0
    for path, classes in PARAMS_OF.items():
        if not classes:  # log and diff read; they have no options to default
            continue
        cmd = root
        for part in path.split():
            cmd = cmd.commands[part]  # type: ignore[attr-defined]
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
        for param in cmd.params:  # type: ignore[attr-defined]
            if param.name in NOT_PARAMS or param.name in CLI_ONLY.get(path, set()):
                continue
            assert param.name in fields, f"{path}: option {param.name} is not a field of {classes}"
            field = fields[param.name]
            if field.default is dataclasses.MISSING:
                assert param.required, f"{path}: {param.name} has a CLI default but its params field has none"
                continue
            assert _as_params(param.default, field.default) == field.default, (path, param.name, param.default)
            checked += 1
    assert checked >= 40  # every command with a params class took part


def test_library_errors_name_values_and_the_cli_names_flags(tmp_path: Path) -> None:
    from conftest import write_tree

    from fercurate.errors import DatasetError
    from fercurate.scan import ScanParams, scan
    from fercurate.workspace import Workspace

    write_tree(tmp_path / "d", splits={"train": 1}, with_bad=False)
    (tmp_path / "d" / "train" / "happpy").mkdir()
    with pytest.raises(DatasetError) as caught:
        scan(Workspace(tmp_path / "lib"), ScanParams(dataset=tmp_path / "d"))
    assert "--" not in str(caught.value) and caught.value.params == ("classes", "ignore")
    res = runner.invoke(app, ["scan", str(tmp_path / "d"), "-w", str(tmp_path / "ws")], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "pass --classes to set them, or --ignore happpy to skip it" in " ".join(res.output.split())


def test_scan_refusals_are_one_line_and_exit_1(tree, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    assert runner.invoke(app, ["scan", str(tree[0]), "-w", ws]).exit_code == 0
    res = runner.invoke(app, ["scan", str(tree[0]), "-w", ws])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1].startswith("error: workspace") and "--new-lineage" in res.stderr
    res = runner.invoke(app, ["scan", str(tree[0]), "-w", ws, "--new-lineage"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["log", "-w", ws])
    assert "Lineage 1 of 2" in res.stdout and "Lineage 2 of 2" in res.stdout and "v0001 (latest)" in res.stdout
    empty = tmp_path / "bad" / "train" / "sad"
    empty.mkdir(parents=True)
    (empty / "1.jpg").write_bytes(b"")
    res = runner.invoke(app, ["scan", str(tmp_path / "bad"), "-w", str(tmp_path / "ws2")])
    assert res.exit_code == 1 and "error: all 1 files" in res.stderr and "empty_file 1" in res.stderr
    assert not (tmp_path / "ws2").exists()


def test_progress_prints_a_line_per_phase_when_not_a_terminal(tree, tmp_path: Path) -> None:
    # CliRunner's stderr is not a terminal, like a CI log or `2> file`
    res = runner.invoke(app, ["scan", str(tree[0]), "-w", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    lines = res.stderr.strip().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d Decoding images \(\d+ items\) \.\.\.", lines[0]), lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d Decoding images: done \(\d+ items, \d+\.\d s\)", lines[-1]), lines


def test_finished_phases_of_unknown_size_stop_their_clocks() -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from fercurate.cli import CountColumn, RichProgress

    bar = Progress(CountColumn(), console=Console(file=io.StringIO(), force_terminal=True), auto_refresh=False)
    view = RichProgress(bar)
    view.start("Generating", None)
    view.advance(3)
    view.start("Decoding", 10)
    view.advance(10)
    view.start("Writing", None)  # nothing advanced
    view.finish()
    generating, decoding, writing = bar.tasks
    for task in bar.tasks:
        assert task.finished and task.stop_time is not None  # the elapsed clock no longer runs
    shown = [t.elapsed for t in bar.tasks]
    time.sleep(0.05)
    assert [t.elapsed for t in bar.tasks] == shown  # frozen, not counting on
    assert str(CountColumn().render(generating)) == "3 done"
    assert str(CountColumn().render(decoding)) == "10/10"
    assert str(CountColumn().render(writing)) == "done"
