"""Every command's --help reads one way: no stray " .", no ``<bool>`` or ``{dataset}``, one default style."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from fercurate.cli import app

runner = CliRunner()
WIDTH = 100


def every_command() -> list[tuple[tuple[str, ...], object]]:
    """(path, command) of the root, every group and every command under them."""
    found: list[tuple[tuple[str, ...], object]] = []

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer vendors its own click)
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def render(path: tuple[str, ...]) -> str:
    result = runner.invoke(
        app, [*path, "--help"], prog_name="fercurate", terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)}
    )
    assert result.exit_code == 0, result.output
    return result.output


def flowing(text: str) -> str:
    """The help as one line of words: panel borders dropped, so a description wrapped over lines reads whole."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


COMMANDS = every_command()


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=lambda p: " ".join(p) if isinstance(p, tuple) else "")
def test_help_reads_one_way(path: tuple[str, ...], cmd: object) -> None:
    text = render(path)
    name = " ".join(("fercurate", *path))
    words = flowing(text)
    stray = re.search(r"\S+ \.(?![./\w])", words)
    assert stray is None, f"{name} --help: a space before a period in {stray.group(0)!r}"
    assert "<bool>" not in text, f"{name} --help gives a flag a <bool> value"
    assert "(default:" not in words, f"{name} --help writes a default by hand; use show_default"
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, f"{name} --help usage: {usage.strip()}"
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]  # type: ignore[attr-defined]
    for arg in arguments:
        assert re.search(rf"\b{arg.name.upper()}\b", usage), f"{name}: argument {arg.name} not in caps in {usage!r}"
        assert re.search(rf"│\s+\*?\s*{arg.name.upper()}\s", text), f"{name}: argument row of {arg.name} not in caps"
    # the description ends with its example, and the rendered help shows it
    paragraphs = (cmd.help or "").strip().split("\n\n")  # type: ignore[attr-defined]
    assert paragraphs[-1].startswith("Example: fercurate"), f"{name}: the docstring does not end with an example"
    assert paragraphs[-1].split("\n")[0].strip() in words


def test_defaults_are_typers_own_style() -> None:
    text = flowing(render(("scan",)))
    assert "Decoding processes. [default: (all CPUs)]" in text
    assert "[default: 48]" in text
    split = flowing(render(("split",)))
    assert "Version to re-split (v0003, 3, -1). [default: (latest)]" in split


def test_the_checks_catch_what_they_name() -> None:
    # the same patterns on the text the issue quoted: each would fail
    assert re.search(r"\S+ \.(?![./\w])", flowing("│ --workers  <int>  Decoding processes .  │"))
    assert "(default:" in flowing("Workspace folder (default: ./manifests).")
