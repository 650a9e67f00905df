"""The ``fercurate`` command line: a thin Typer layer over the library.

Each command parses its options into the stage's params dataclass, calls one library function and
renders the returned result with Rich. Errors the user can fix (:class:`FercurateError`) are printed
in red without a traceback and exit with code 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fercurate import __version__
from fercurate.errors import FercurateError
from fercurate.workspace import WORKSPACE_ENV, Workspace

app = typer.Typer(
    help="Curate facial-expression-recognition datasets and measure what each fix bought.\n\n"
    "Example: fercurate demo demo/ && fercurate scan demo/dataset && fercurate log",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar=WORKSPACE_ENV,
        help=f"Workspace folder holding the manifest versions [default: ./manifests, or ${WORKSPACE_ENV}].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command that turns :class:`FercurateError` into a red one-line message and exit 1."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except FercurateError as exc:
                err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


class RichProgress:
    """Adapts :class:`fercurate.progress.Progress` to a Rich progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total or 0)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    """A Rich progress bar on stderr for the duration of the block (silent when not a terminal)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )
    with bar:
        yield RichProgress(bar)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("key")
    table.add_column("rows", justify="right")
    for key, value in sorted(counts.items()):
        table.add_row(str(key), str(value))
    return table


def frame_table(title: str, frame: Any, index_name: str = "") -> Table:
    """Render a small pandas frame (index + columns) as a Rich table."""
    table = Table(title=title, title_justify="left")
    table.add_column(index_name or (frame.index.name or ""))
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, row in frame.iterrows():
        table.add_row(str(idx), *[_fmt(v) for v in row.tolist()])
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"fercurate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Curate facial-expression-recognition datasets and measure what each fix bought.

    Example: fercurate demo demo/ && fercurate scan demo/dataset && fercurate log
    """


# -- scan ------------------------------------------------------------------------------------------
@command("scan")
def scan_cmd(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (split/class folders or class folders) or CSV.")],
    workspace: WorkspaceOpt = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names to accept (default: any known FER class)."),
    ] = None,
    ignore: Annotated[
        list[str] | None, typer.Option(help="Folder name to skip (repeatable), e.g. --ignore extras.")
    ] = None,
    image_size: Annotated[int, typer.Option(help="Side of the grayscale images fercurate works on.")] = 48,
    workers: Annotated[int | None, typer.Option(help="Decoding processes [default: all CPUs].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a dataset into a new manifest version (v0000 in a new workspace).

    Unreadable and degenerate images are recorded as invalid, never crash the scan.

    Example: fercurate scan ~/data/Facial_emotion_images --workspace manifests
    """
    from fercurate.scan import ScanParams, scan

    params = ScanParams(
        dataset=dataset,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        ignore=tuple(ignore or ()),
        image_size=image_size,
        workers=workers,
    )
    with progress_bar() as progress:
        result = scan(Workspace(workspace), params, progress)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        f"[bold green]{result.version.version}[/] scan of {params.dataset} ({result.layout} layout): "
        f"{result.rows} files in {result.seconds:.1f} s"
    )
    out.print(counts_table("Rows by status", result.by_status))
    out.print(counts_table("Active rows by split", result.by_split))
    out.print(counts_table("Active rows by class", result.by_label))
    if result.invalid_reasons:
        out.print(counts_table("Invalid files by reason", result.invalid_reasons))
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- log / diff / export ---------------------------------------------------------------------------
@command("log")
def log_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List the manifest versions of the workspace, oldest first.

    Example: fercurate log --json
    """
    from fercurate.history import log

    entries = log(Workspace(workspace))
    if as_json:
        print_json(entries)
        return
    table = Table(title=f"Versions in {Workspace(workspace).root}", title_justify="left")
    for col in ("version", "stage", "parent", "created", "rows", "active", "train/val/test"):
        table.add_column(col)
    for e in entries:
        split = e["by_split"]
        table.add_row(
            e["version"],
            e["stage"],
            e["parent"] or "-",
            e["created"],
            str(e["rows"]),
            str(e["active"]),
            f"{split.get('train', 0)}/{split.get('val', 0)}/{split.get('test', 0)}",
        )
    out.print(table)


@command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="Older version (v0001, 1, -1, latest).")],
    b: Annotated[str, typer.Argument(help="Newer version.")] = "latest",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what changed between two versions: rows, statuses, relabels, split moves, class counts.

    Example: fercurate diff v0000 v0001
    """
    from fercurate.history import diff

    d = diff(Workspace(workspace), a, b)
    if as_json:
        print_json(d.to_dict())
        return
    out.print(f"[bold]{d.a.version} ({d.a.stage}) -> {d.b.version} ({d.b.stage})[/]")
    out.print(f"rows added: {d.added}   rows removed: {d.removed}")
    for title, counts in (
        ("Status changes", d.status_changes),
        ("Relabels", d.relabels),
        ("Split moves (active rows)", d.split_moves),
    ):
        out.print(counts_table(title, counts) if counts else f"{title}: none")
    out.print(frame_table(f"Active rows before ({d.a.version})", d.before, "class"))
    out.print(frame_table(f"Active rows after ({d.b.version})", d.after, "class"))


@command("export")
def export_cmd(
    version: Annotated[str, typer.Argument(help="Version to export (v0003, 3, latest).")],
    dest: Annotated[Path, typer.Argument(help="Destination folder.")],
    workspace: WorkspaceOpt = None,
    mode: Annotated[str, typer.Option(help="copy | hardlink | symlink (folders format).")] = "copy",
    fmt: Annotated[str, typer.Option("--format", help="folders | csv (FER2013-style emotion,pixels,Usage).")] = (
        "folders"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty DEST.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a version's active rows as DEST/{train,val,test}/{label}/{file} or as a FER2013 CSV.

    Example: fercurate export latest cleaned/ --mode hardlink
    """
    from fercurate.export import ExportParams, export

    params = ExportParams(version=version, dest=dest, mode=mode, format=fmt, overwrite=overwrite)
    with progress_bar() as progress:
        result = export(Workspace(workspace), params, progress)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"exported {result.files} images of {result.version} to {result.dest} ({result.format})")
    out.print(counts_table("Images by split", result.by_split))


# -- demo ------------------------------------------------------------------------------------------
@command("demo")
def demo_cmd(
    dest: Annotated[Path, typer.Argument(help="Folder to write the demo dataset into.")] = Path("demo"),
    run: Annotated[bool, typer.Option("--run", help="Also run the whole pipeline on it and score each stage.")] = (
        False
    ),
    n_images: Annotated[int, typer.Option(help="Images in the FER-like dataset.")] = 3000,
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo in DEST.")] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a messy, FER-like demo dataset (no download) with its ground truth; --run curates it.

    The demo has the faults of a real FER dataset: lopsided splits, cross-split near-duplicates,
    about 10% wrong labels (mostly sad<->neutral), invalid files and a rare class.

    Example: fercurate demo demo/ --run
    """
    from fercurate.demo import DemoParams, generate_demo

    params = DemoParams(n_images=n_images, seed=seed)
    if run:
        from fercurate.pipeline import DemoRunParams, run_demo

        ws = Workspace(workspace if workspace is not None else dest / "workspace")
        with progress_bar() as progress:
            report = run_demo(ws, DemoRunParams(dest=dest, demo=params, overwrite=overwrite), progress)
        if as_json:
            print_json(report.to_dict())
            return
        report.render(out)
        return
    result = generate_demo(dest, params, overwrite=overwrite)
    if as_json:
        print_json({"dest": str(result.dest), "dataset": str(result.dataset_dir), "counts": result.counts})
        return
    out.print(f"demo dataset written to {result.dataset_dir} (ground truth: {result.truth_path})")
    out.print(counts_table("Planted", result.counts))
    out.print(f"next: fercurate scan {result.dataset_dir}")


# -- stage commands are added above this line, one section each --------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
