"""The ``fercurate`` command line: a thin Typer layer over the library.

Each command parses its options into the stage's params dataclass, calls one library function and
renders the returned result with Rich. Defaults and choices come from the params classes and the
method registries (a test checks every option's default against its params field). Errors the user
can fix (:class:`FercurateError`) are printed in red without a traceback and exit with code 1; the
library names parameters, and :func:`command` shows them as this command's flags.

This module is long because it holds one short function per command (parse, call, render) and
nothing else; the commands share the option types, the error handling and the table helpers above
them, which a package split by stage would have to import back from one place.
"""

from __future__ import annotations

import functools
import gc
import json
import re
import sys
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from fercurate import __version__
from fercurate.affectnet.params import SPLIT_MODES, MergeParams
from fercurate.benchmark import BenchmarkParams
from fercurate.dedup.hashers import HASHERS
from fercurate.dedup.params import CONFLICT_MODES, PHOTO_TOLERANCES, RANGES, DedupParams, describe
from fercurate.demo.params import DemoParams
from fercurate.demo.run import DemoRunParams
from fercurate.engine import ENGINE_ENV, ENGINES, Engine, EngineParams
from fercurate.errors import FercurateError
from fercurate.export import FORMATS, MODES, ExportParams
from fercurate.manifest import SPLITS
from fercurate.relabel.apply import ApplyParams
from fercurate.relabel.flag import FlagParams
from fercurate.relabel.scoring import FILTERS, RANKERS
from fercurate.relabel.serve import ServeParams
from fercurate.scan import ScanParams
from fercurate.split.params import MIN_CLASS_ROWS, TOLERANCE_PP, SplitParams
from fercurate.split.strategies import STRATEGIES
from fercurate.train.config import PRESETS
from fercurate.votes.params import SCHEMES, VotesParams
from fercurate.workspace import WORKSPACE_ENV, Workspace


def _plain_names(params: Iterable[Any]) -> None:
    """Show arguments as ``DATASET`` and flags without a value placeholder.

    Typer's rich help names an argument's type beside it, writes a required argument as
    ``{dataset}`` in the usage line and gives every flag (``--json``, ``--help``) a ``<bool>``
    placeholder although a flag takes no value; an explicit metavar overrides both.
    """
    for param in params:
        if param.metavar is not None:
            continue
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
        elif getattr(param, "is_flag", False):
            param.metavar = ""


class PlainNames:
    """Mixin for a Typer command or group: :func:`_plain_names` on its parameters and its ``--help``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        _plain_names(self.params)  # type: ignore[attr-defined]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _plain_names([option] if option is not None else [])
        return option


class HelpCommand(PlainNames, TyperCommand):
    """A command whose help reads like click's: ``fercurate scan [OPTIONS] DATASET``, flags without ``<bool>``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class HelpGroup(PlainNames, TyperGroup):
    """A command group whose flags and ``--help`` show no ``<bool>`` placeholder."""


app = typer.Typer(
    cls=HelpGroup,
    help="Curate facial-expression-recognition datasets and measure what each fix bought.\n\n"
    "Example: fercurate demo demo/ && fercurate scan demo/dataset && fercurate log",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)
relabel_app = typer.Typer(
    cls=HelpGroup,
    help="Find likely wrong labels (flag), decide them in a local page (serve), apply the decisions (apply).\n\n"
    "Example: fercurate relabel-review flag && fercurate relabel-review serve",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(relabel_app, name="relabel-review")

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

#: The params classes each command builds (command path -> classes); the defaults test reads it.
PARAMS_OF: dict[str, tuple[type, ...]] = {}

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar=WORKSPACE_ENV,
        help="Workspace folder holding the manifest versions.",
        show_default="./manifests",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        envvar=ENGINE_ENV,
        help=f"Where per-image and per-model work runs: {' | '.join(ENGINES)} "
        "(ray needs pip install fercurate\\[ray]; see docs/scale.md).",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --engine ray: the cluster to use (host:port).",
        show_default="$RAY_ADDRESS, else a local Ray for this run",
    ),
]


def command(name: str, *params: type, group: typer.Typer = app) -> Callable[[F], F]:
    """Register a command of ``group`` that builds ``params``; a :class:`FercurateError` becomes one red line.

    The library names parameters (``exc.params``); the message shows them as this command's flags.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except FercurateError as exc:
                message = with_flags(str(exc), exc.params, flags_of(fn))
                err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        group.command(name, cls=HelpCommand)(wrapper)
        path = name if group is app else f"{_group_name(group)} {name}"
        PARAMS_OF[path] = params
        return fn

    return decorate


def flags_of(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> how the user spells it: ``--top-per-class``, ``--filter``, ``DEST``."""
    flags = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        info = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, typer.models.ParameterInfo)), None)
        if isinstance(info, typer.models.ArgumentInfo):
            flags[name] = name.upper()
        elif info is not None:
            # in Annotated form Typer keeps the first declaration in ``default``
            given = [info.default, *(info.param_decls or ())]
            decls = [d for d in given if isinstance(d, str) and d.startswith("--")]
            flags[name] = decls[0] if decls else "--" + name.replace("_", "-")
    return flags


def with_flags(message: str, params: Iterable[str], flags: dict[str, str]) -> str:
    """``message`` with each named parameter shown as its flag (``top_per_class`` -> ``--top-per-class``)."""
    for name in params:
        if name in flags:
            # the first mention, as a word of its own (not inside a path such as training.csv)
            message = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w/])", flags[name], message, count=1)
    return message


def _group_name(group: typer.Typer) -> str:
    return next(str(info.name) for info in app.registered_groups if info.typer_instance is group)


def choices(names: Iterable[str]) -> str:
    """``a | b | c``: the accepted values of an option, from its registry."""
    return " | ".join(names)


@contextmanager
def engine_for(engine: str, ray_address: str | None) -> Iterator[Engine]:
    """The engine ``--engine`` / ``--ray-address`` choose, for the duration of the block."""
    from fercurate.engine import open_engine

    with open_engine(EngineParams(engine=engine, ray_address=ray_address)) as chosen:
        yield chosen


def ratio_text(ratios: Iterable[float]) -> str:
    """Ratios as ``--ratios`` takes them (``80/10/10``)."""
    return "/".join(f"{r:g}" for r in ratios)


class RichProgress:
    """Adapts :class:`fercurate.progress.Progress` to a Rich progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._task = self._progress.add_task(description, total=total, unknown_total=total is None)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        """Show the current phase as done: its bar full and its clock stopped, also when its total was unknown."""
        if self._task is None:
            return
        task = next(t for t in self._progress.tasks if t.id == self._task)
        done = task.total if task.total is not None else task.completed
        self._progress.update(self._task, total=done, completed=done)
        self._progress.stop_task(self._task)
        self._task = None


class CountColumn(ProgressColumn):
    """``done/total`` while a phase runs; ``n/?`` and then ``n done`` for a phase of unknown size."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unknown_total"):
            if task.finished:
                return Text(f"{int(task.completed)} done" if task.completed else "done", style="progress.download")
            return Text(f"{int(task.completed)}/?", style="progress.download")
        return Text(f"{int(task.completed)}/{int(task.total or 0)}", style="progress.download")


class LineProgress:
    """Progress as plain lines for logs and CI, where a bar would show nothing until the end.

    Prints a line when a phase starts and one when it ends, with the clock time and how long the
    phase took, so a long command that writes to a file still shows where it is.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._phase: tuple[str, int | None, float] | None = None
        self._done = 0

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._phase = (description, total, time.perf_counter())
        self._done = 0
        size = f" ({total} items)" if total is not None else ""
        self._print(f"{description}{size} ...")

    def advance(self, n: int = 1) -> None:
        self._done += n

    def finish(self) -> None:
        if self._phase is None:
            return
        description, total, since = self._phase
        items = f"{self._done} items, " if self._done or total else ""
        self._print(f"{description}: done ({items}{time.perf_counter() - since:.1f} s)")
        self._phase = None

    def _print(self, text: str) -> None:
        self._console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar() -> Iterator[RichProgress | LineProgress]:
    """Progress on stderr for the duration of the block: a Rich bar on a terminal, else a line per phase
    start and end (Rich's ``Console.is_terminal`` tells them apart). A phase left running when the
    block ends is shown as done; one stopped by an error is not."""
    if not err.is_terminal:
        lines = LineProgress(err)
        yield lines
        lines.finish()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        CountColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    with bar:
        view = RichProgress(bar)
        yield view
        view.finish()


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
@command("scan", ScanParams, EngineParams)
def scan_cmd(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (split/class folders or class folders) or CSV.")],
    workspace: WorkspaceOpt = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names to accept.", show_default="any known FER class"),
    ] = ",".join(ScanParams.classes) if ScanParams.classes else None,
    ignore: Annotated[
        list[str] | None, typer.Option(help="Folder name to skip (repeatable), e.g. --ignore extras.")
    ] = list(ScanParams.ignore) or None,
    image_size: Annotated[
        int, typer.Option(help="Side of the grayscale images fercurate works on.")
    ] = ScanParams.image_size,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes.", show_default="all CPUs")
    ] = ScanParams.workers,
    max_pixels: Annotated[
        int, typer.Option(help="Images of more pixels are invalid, judged from the header.", show_default="4096x4096")
    ] = ScanParams.max_pixels,
    new_lineage: Annotated[
        bool,
        typer.Option(
            "--new-lineage",
            help="Scan into a workspace that already holds versions, as a second lineage that becomes latest.",
        ),
    ] = ScanParams.new_lineage,
    vote_scheme: Annotated[
        str, typer.Option(help="FER+ release only: label = the votes' majority | plurality | drop pick.")
    ] = ScanParams.vote_scheme,
    engine: EngineOpt = EngineParams.engine,
    ray_address: RayAddressOpt = EngineParams.ray_address,
    as_json: JsonOpt = False,
) -> None:
    """Read a dataset into a new root manifest version (v0000 in a new workspace).

    Unreadable and degenerate images are recorded as invalid, never crash the scan; a dataset with no
    readable image at all is an error. A workspace holds one dataset's lineage: scanning into one that
    already has versions needs --new-lineage.

    Example: fercurate scan ~/data/Facial_emotion_images --workspace manifests
    """
    from fercurate.scan import scan

    params = ScanParams(
        dataset=dataset,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        ignore=tuple(ignore or ()),
        image_size=image_size,
        workers=workers,
        max_pixels=max_pixels,
        new_lineage=new_lineage,
        vote_scheme=vote_scheme,
    )
    with engine_for(engine, ray_address) as chosen, progress_bar() as progress:
        result = scan(Workspace(workspace), params, progress, chosen)
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
    """List the manifest versions of the workspace, oldest first, one table per lineage.

    A lineage is a scan and every version made from it; a second scan into the same workspace
    (scan --new-lineage) starts a second lineage, whose versions descend from none of the first.

    Example: fercurate log --json
    """
    from fercurate.history import log

    entries = log(Workspace(workspace))
    if as_json:
        print_json(entries)
        return
    lineages = list(dict.fromkeys(e["lineage"] for e in entries if e.get("lineage")))
    latest = next((e["version"] for e in reversed(entries) if "stage" in e), None)
    root_dir = Workspace(workspace).root
    for root in lineages or [None]:
        title = f"Versions in {root_dir}"
        if len(lineages) > 1:
            title = f"Lineage {lineages.index(root) + 1} of {len(lineages)} in {root_dir}: from {root}"
        table = Table(title=title, title_justify="left")
        for col in ("version", "stage", "parent", "created", "rows", "active", "train/val/test", "votes"):
            table.add_column(col)
        table.add_column("state")
        for e in entries:
            if "stage" not in e:  # a damaged record: nothing but its number is known (in the last table)
                if root == (lineages[-1] if lineages else None):
                    table.add_row(e["version"], *["?"] * 7, "[red]damaged[/]")
                continue
            if e["lineage"] != root:
                continue
            split = e["by_split"]
            state = f"[red]{e['state']}[/]" if e["state"] == "damaged" else e["state"]
            table.add_row(
                e["version"] + (" (latest)" if e["version"] == latest else ""),
                e["stage"],
                e["parent"] or "-",
                e["created"],
                str(e["rows"]),
                str(e["active"]),
                f"{split.get('train', 0)}/{split.get('val', 0)}/{split.get('test', 0)}",
                _vote_coverage(e["votes"]),
                state + (" (report incomplete)" if e["report_incomplete"] else ""),
            )
        out.print(table)
    for e in entries:
        if e["problem"]:
            out.print(f"[red]{e['version']} damaged:[/] {e['problem']}", soft_wrap=True)


@command("check")
def check_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Verify every version (record and Parquet file hash), report folder and cache entry.

    Exits 1 when anything is damaged, naming each damaged file.

    Example: fercurate check --workspace manifests --json
    """
    from fercurate.check import check

    result = check(Workspace(workspace))
    if as_json:
        print_json(result.to_dict())
    else:
        table = Table(title=f"Check of {result.workspace}", title_justify="left")
        for col in ("kind", "name", "state", "problem"):
            table.add_column(col, overflow="fold")
        shown = [f for f in result.findings if f.kind != "cache" or f.state != "ok"]
        for f in shown:
            state = f"[red]{f.state}[/]" if f.state == "damaged" else f.state
            table.add_row(f.kind, f.name, state, f.problem or "")
        out.print(table)
        cached = sum(f.kind == "cache" and f.state == "ok" for f in result.findings)
        out.print(f"{cached} cache entries ok; {len(result.damaged)} damaged")
    if result.damaged:
        raise typer.Exit(1)


def _vote_coverage(coverage: dict[str, int] | None) -> str:
    """``"k/n"`` active rows with annotator votes, or ``-`` for a version without votes."""
    return f"{coverage['active_with_votes']}/{coverage['active']}" if coverage else "-"


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
    if d.votes_before or d.votes_after:
        coverage = f"{_vote_coverage(d.votes_before)} -> {_vote_coverage(d.votes_after)}"
        out.print(f"active rows with annotator votes: {coverage}")
    out.print(frame_table(f"Active rows before ({d.a.version})", d.before, "class"))
    out.print(frame_table(f"Active rows after ({d.b.version})", d.after, "class"))


@command("export", ExportParams)
def export_cmd(
    version: Annotated[str, typer.Argument(help="Version to export (v0003, 3, latest).")],
    dest: Annotated[
        Path,
        typer.Argument(help="Destination folder; with --format csv, the CSV file (a name ending .csv) or a folder."),
    ],
    workspace: WorkspaceOpt = None,
    mode: Annotated[str, typer.Option(help=f"{choices(MODES)} (folders format).")] = ExportParams.mode,
    format: Annotated[
        str,
        typer.Option("--format", help=f"{choices(FORMATS)} (csv: FER2013 emotion,pixels,Usage; + fer2013new.csv)."),
    ] = ExportParams.format,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty DEST.")] = ExportParams.overwrite,
    as_json: JsonOpt = False,
) -> None:
    """Write a version's active rows as DEST/{train,val,test}/{label}/{file} or as a FER2013 CSV.

    With --format csv, a DEST ending in .csv is the file written; any other DEST is a folder that
    gets fer2013.csv.

    Example: fercurate export latest cleaned/ --mode hardlink
    """
    from fercurate.export import export

    params = ExportParams(version=version, dest=dest, mode=mode, format=format, overwrite=overwrite)
    with progress_bar() as progress:
        result = export(Workspace(workspace), params, progress)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"exported {result.files} images of {result.version} to {result.dest} ({result.format})")
    out.print(counts_table("Images by split", result.by_split))


# -- demo ------------------------------------------------------------------------------------------
@command("demo", DemoParams, DemoRunParams)
def demo_cmd(
    dest: Annotated[Path, typer.Argument(help="Folder to write the demo dataset into.")] = Path("demo"),
    run: Annotated[bool, typer.Option("--run", help="Also run the whole pipeline on it and score each stage.")] = (
        False
    ),
    n_images: Annotated[int, typer.Option(help="Images in the FER-like dataset.")] = DemoParams.n_images,
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = DemoParams.seed,
    overwrite: Annotated[
        bool,
        typer.Option(help="Write into a non-empty DEST holding no earlier demo (a demo there is reused or replaced)."),
    ] = DemoRunParams.overwrite,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a messy, FER-like demo dataset (no download) with its ground truth; --run curates it.

    The demo has the faults of a real FER dataset: lopsided splits, cross-split near-duplicates,
    about 10% wrong labels (mostly sad<->neutral), invalid files and a rare class. Run again, it
    reuses the demo in DEST when the options are the same and replaces it otherwise, and --run
    replaces the demo's own workspace (DEST/workspace), keeping its caches.

    Example: fercurate demo demo/ --run
    """
    from fercurate.demo import generate_demo

    params = DemoParams(n_images=n_images, seed=seed)
    if run:
        from fercurate.demo.run import run_demo

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
        print_json(
            {
                "dest": str(result.dest),
                "dataset": str(result.dataset_dir),
                "action": result.action,
                "counts": result.counts,
            }
        )
        return
    said = {"written": "written to", "reused": "already in (same options: reused)", "replaced": "replaced in"}
    out.print(f"demo dataset {said[result.action]} {result.dataset_dir} (ground truth: {result.truth_path})")
    out.print(counts_table("Planted", result.counts))
    out.print(f"next: fercurate scan {result.dataset_dir}")


# -- split -----------------------------------------------------------------------------------------
@command("split", SplitParams)
def split_cmd(
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to re-split (v0003, 3, -1).", show_default="latest"),
    ] = SplitParams.version,
    ratios: Annotated[
        str,
        typer.Option(
            help="train/val/test percentages summing to 100: 80/10/10, 80,10,10 or 0.8/0.1/0.1; val or test may be 0."
        ),
    ] = ratio_text(SplitParams.ratios),
    seed: Annotated[
        int, typer.Option(help="Random seed: the same manifest and seed give the same splits.")
    ] = SplitParams.seed,
    group_by: Annotated[
        list[str] | None,
        typer.Option(
            "--group-by",
            help="Column whose shared values stay in one split (repeatable), e.g. --group-by subject_id; "
            "'related' stands for related_group (other frames of one sitting, from dedup). "
            "dup_group (from dedup) is always used when present.",
        ),
    ] = list(SplitParams.group_by) or None,
    keep_test: Annotated[
        bool,
        typer.Option(
            "--keep-test",
            help="Keep the current test rows (an official test set) in test, with every group touching them, "
            "and split the rest train/val in the train:val proportion of --ratios.",
        ),
    ] = SplitParams.keep_test,
    strategy: Annotated[
        str, typer.Option(help=f"{choices(STRATEGIES)} (the first is class-stratified; the second a baseline).")
    ] = SplitParams.strategy,
    as_json: JsonOpt = False,
) -> None:
    """Re-split the active rows into train/val/test, stratified by class, keeping duplicate groups together.

    Each split's class shares match the whole within 1 percentage point for classes with 100+ images;
    rows sharing a dup_group or a --group-by value never straddle two splits. Removed and invalid rows
    keep their split; split_original keeps the dataset's own split. Writes a before/after bar chart.
    --group-by related also keeps dedup's related groups (other frames of one sitting) in one split.

    Example: fercurate split --ratios 80/10/10 --seed 0 --group-by related
    """
    from fercurate.split import parse_ratios, split

    params = SplitParams(
        version=version,
        ratios=parse_ratios(ratios),
        seed=seed,
        group_by=tuple(group_by or ()),
        keep_test=keep_test,
        strategy=strategy,
    )
    with progress_bar() as progress:
        result = split(Workspace(workspace), params, progress)
    if as_json:
        print_json(result.to_dict())
        return
    shown = "/".join(f"{r:g}" for r in result.ratios)
    out.print(
        f"[bold green]{result.version.version}[/] split of {result.parent} ({shown}, seed {result.seed}"
        f"{', keep-test' if result.keep_test else ''}): {result.moved} of {result.rows_active} active rows moved"
    )
    sizes = Table(title="Active rows by split", title_justify="left")
    for col in ("split", "before", "after", "target %"):
        sizes.add_column(col, justify="left" if col == "split" else "right")
    for name, ratio in zip(SPLITS, result.ratios, strict=True):
        target = "kept" if result.keep_test and name == "test" else f"{ratio:.1f}"
        sizes.add_row(
            name,
            f"{result.before.loc['all', name]} ({result.before_pct.loc['all', name]:.1f}%)",
            f"{result.after.loc['all', name]} ({result.after_pct.loc['all', name]:.1f}%)",
            target,
        )
    out.print(sizes)
    for title, counts, pct in (
        (f"Class share of each split, before ({result.parent})", result.before, result.before_pct),
        (f"Class share of each split, after ({result.version.version})", result.after, result.after_pct),
    ):
        table = Table(title=title, title_justify="left")
        table.add_column("class")
        for name in counts.columns:
            table.add_column("whole" if name == "total" else name, justify="right")
        for label in counts.index:
            if label == "all":
                continue
            table.add_row(
                str(label),
                *[
                    f"{counts.loc[label, c]} ({pct.loc[label, c]:.1f}%)" if counts.loc["all", c] else "0"
                    for c in counts.columns
                ],
            )
        out.print(table)
    colour = "green" if result.within_tolerance else "yellow"
    out.print(
        f"largest class-share deviation: [{colour}]{result.max_deviation_pp:.2f} pp[/] "
        f"(before {result.max_deviation_pp_before:.2f} pp; tolerance {TOLERANCE_PP:g} pp for classes with "
        f"{MIN_CLASS_ROWS}+ images); "
        f"split sizes off target by {result.size_deviation_pp:.2f} pp"
    )
    if result.groups:
        out.print(
            f"{result.groups} groups ({result.rows_in_groups} rows) kept whole; largest {result.largest_group} rows"
        )
    if result.moves:
        out.print("moves: " + ", ".join(f"{k} {v}" for k, v in sorted(result.moves.items())))
    out.print(f"chart: {result.chart}")
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- merge-affectnet -------------------------------------------------------------------------------
@command("merge-affectnet", MergeParams, EngineParams)
def merge_affectnet_cmd(
    source: Annotated[
        Path, typer.Argument(help="AffectNet folder (official images + CSV, or class folders), or its CSV.")
    ],
    workspace: WorkspaceOpt = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            help="The official CSV, e.g. training.csv.",
            show_default="every CSV in SOURCE with the official columns",
        ),
    ] = MergeParams.csv,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to merge into (v0003, 3, -1).", show_default="latest"),
    ] = MergeParams.version,
    target: Annotated[
        str, typer.Option(help="'equal' (every class up to the largest) or N (every class up to N rows).")
    ] = MergeParams.target,
    target_fraction: Annotated[
        float | None,
        typer.Option(
            help="Every class up to this fraction of the largest, e.g. 0.8 (instead of --target).", show_default=False
        ),
    ] = MergeParams.target_fraction,
    margin: Annotated[
        float, typer.Option(help="Margin around the face box on each side, as a fraction of its side.")
    ] = MergeParams.margin,
    mapping: Annotated[
        str | None,
        typer.Option(
            "--map",
            help="Source class -> dataset class overrides, e.g. surprised=surprise,contempt=angry.",
            show_default="fold common names: anger->angry, happiness->happy, ...",
        ),
    ] = None,
    splits: Annotated[
        str,
        typer.Option(
            help=f"{choices(SPLIT_MODES)}: new rows into train/val/test by --ratios, per class; or train only, "
            "balancing the train split (val and test stay purely original).",
        ),
    ] = MergeParams.splits,
    ratios: Annotated[str, typer.Option(help="train/val/test percentages for --splits stratified.")] = ratio_text(
        MergeParams.ratios
    ),
    seed: Annotated[int, typer.Option(help="Fixes which images are taken and where they go.")] = MergeParams.seed,
    image_size: Annotated[
        int | None, typer.Option(help="Side of the stored faces.", show_default="the dataset's")
    ] = MergeParams.image_size,
    workers: Annotated[
        int | None, typer.Option(help="Conversion processes.", show_default="all CPUs")
    ] = MergeParams.workers,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; convert and write nothing.")
    ] = MergeParams.dry_run,
    engine: EngineOpt = EngineParams.engine,
    ray_address: RayAddressOpt = EngineParams.ray_address,
    as_json: JsonOpt = False,
) -> None:
    """Top up under-represented classes with faces converted from AffectNet (48x48 grayscale).

    Reads the official layout (images + training.csv, a face box per row; codes 8-10 skipped) or class folders.

    Each face is cropped to its box plus --margin, made grayscale and resized with antialiasing into the store.

    Only what each class needs is converted, in a seeded order; invalid images and near-duplicates are skipped.

    The source is never modified. Writes the skipped files (merge_skipped.parquet) and a chart.

    Example: fercurate merge-affectnet ~/data/AffectNet --target equal --splits train
    """
    from fercurate.affectnet import merge_affectnet, parse_mapping
    from fercurate.split import parse_ratios  # one ratio syntax for every command

    params = MergeParams(
        source=source,
        csv=csv,
        version=version,
        target=target,
        target_fraction=target_fraction,
        margin=margin,
        mapping=parse_mapping(mapping) or MergeParams.mapping,
        splits=splits,
        ratios=parse_ratios(ratios),
        seed=seed,
        dry_run=dry_run,
        image_size=image_size,
        workers=workers,
    )
    with engine_for(engine, ray_address) as chosen, progress_bar() as progress:
        result = merge_affectnet(Workspace(workspace), params, progress, chosen)
    if as_json:
        print_json(result.to_dict())
        return
    by_split = "/".join(str(result.added_by_split.get(s, 0)) for s in SPLITS)
    if result.version is None:
        out.print(
            f"[bold yellow]dry run[/] merge-affectnet into {result.parent} ({result.layout} layout): "
            f"would add {int(result.plan['planned'].sum())} faces; nothing written"
        )
    else:
        out.print(
            f"[bold green]{result.version.version}[/] merge-affectnet into {result.parent} ({result.layout} layout): "
            f"added {result.added} faces (train/val/test {by_split}) in {result.seconds:.1f} s"
        )
    mapped = Table(title="Source classes", title_justify="left")
    mapped.add_column("source class")
    mapped.add_column("dataset class")
    for name, cls in result.mapping.items():
        mapped.add_row(name, cls or "[dim]skipped (not in the dataset)[/]")
    out.print(mapped)
    out.print(frame_table("Plan and what was done", result.plan, "class"))
    out.print(frame_table(f"Active rows before ({result.parent})", result.before, "class"))
    after_title = "planned" if result.version is None else result.version.version
    out.print(frame_table(f"Active rows after ({after_title})", result.after, "class"))
    if result.skipped:
        out.print(counts_table("Skipped source rows by reason", result.skipped))
    if result.skipped_path:
        out.print(f"skipped files: {result.skipped_path}")
    if result.chart_path:
        out.print(f"chart: {result.chart_path}")
    out.print(f"copies of dataset images looked for with {result.matched_as}")
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- benchmark -------------------------------------------------------------------------------------
@command("benchmark", BenchmarkParams, EngineParams)
def benchmark_cmd(
    versions: Annotated[
        list[str] | None, typer.Argument(help="Versions to compare.", show_default="every version in the lineage")
    ] = list(BenchmarkParams.versions) or None,
    workspace: WorkspaceOpt = None,
    seeds: Annotated[int, typer.Option(help="Models per version (different seeds).")] = BenchmarkParams.seeds,
    preset: Annotated[
        str, typer.Option(help=f"Trainer preset: {choices(PRESETS)} (cpu: 2 CPU cores; bpp: GPU; tiny: tests).")
    ] = BenchmarkParams.preset,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = BenchmarkParams.device,
    targets: Annotated[
        str, typer.Option(help="Train on: labels | votes (normalised annotator votes, as FER+).")
    ] = BenchmarkParams.targets,
    gold_labels: Annotated[
        str, typer.Option(help="Score gold against: labels | votes (the vote majority where gold rows have one).")
    ] = BenchmarkParams.gold_labels,
    engine: EngineOpt = EngineParams.engine,
    ray_address: RayAddressOpt = EngineParams.ray_address,
    as_json: JsonOpt = False,
) -> None:
    """Train the built-in CNN on each version and report what each curation step bought.

    Every model is scored on one gold test set no version trained on; the report shows each
    version's own validation accuracy beside it, so inflated numbers are visible.

    Example: fercurate benchmark v0000 v0004 --seeds 3 --preset cpu
    """
    from fercurate.benchmark import benchmark, summary_rows

    params = BenchmarkParams(
        versions=tuple(versions or ()),
        seeds=seeds,
        preset=preset,
        overrides=(("epochs", epochs),) if epochs else (),
        device=device,
        targets=targets,
        gold_labels=gold_labels,
    )
    with engine_for(engine, ray_address) as chosen, progress_bar() as progress:
        result = benchmark(Workspace(workspace), params, progress, chosen)
    if as_json:
        print_json(result.to_dict())
        return
    rows = summary_rows(result)
    table = Table(
        title=f"Benchmark ({result.preset}, {result.seeds} seed(s), {result.device}); gold set "
        f"{result.gold_size} images; accuracies in %",
        title_justify="left",
    )
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row.values())
    out.print(table)
    out.print(
        f"gold set: {result.gold_excluded} test images left out for a duplicate in some train/val split "
        f"(looked for with {result.gold_matched_as})"
    )
    for w in result.warnings:
        out.print(f"[yellow]warning:[/] {w}")
    out.print(f"report: {result.report_dir / 'report.html'} (and report.md, plots, runs.parquet)")


# -- relabel-review --------------------------------------------------------------------------------
@command("flag", FlagParams, EngineParams, group=relabel_app)
def relabel_flag_cmd(
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to flag (v0003, 3, -1).", show_default="latest"),
    ] = FlagParams.version,
    folds: Annotated[
        int | None,
        typer.Option(
            help="Cross-fitting folds; duplicate groups stay in one fold.",
            show_default="the preset's plan: 3-5 by size",
        ),
    ] = FlagParams.folds,
    preset: Annotated[
        str, typer.Option(help=f"Training preset: {choices(PRESETS)} (cpu: 2 CPU cores; bpp: GPU recipe).")
    ] = FlagParams.preset,
    epochs: Annotated[
        int | None, typer.Option(help="Override the preset's maximum epochs.", show_default=False)
    ] = FlagParams.epochs,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the models.")] = FlagParams.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = FlagParams.device,
    method: Annotated[str, typer.Option(help=f"Ranking of the flags: {choices(RANKERS)}.")] = FlagParams.method,
    filter_by: Annotated[
        str,
        typer.Option(
            "--filter",
            help=f"Which rows are flagged: {choices(FILTERS)}. predicted_neq_given: every row the fold models "
            "label otherwise (best F1 on real FER); prune_by_noise_rate: cleanlab's default, as many per "
            "(given, suggested) pair as the confident joint estimates wrong.",
        ),
    ] = FlagParams.filter_by,
    top_per_class: Annotated[
        int, typer.Option(help="Flagged images per class in flagged.html/png.")
    ] = FlagParams.top_per_class,
    num_threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads.", show_default="torch's")
    ] = FlagParams.num_threads,
    votes: Annotated[
        str, typer.Option(help="Annotator votes: auto (they decide rows that have them) | only (no model) | off.")
    ] = FlagParams.votes,
    max_support: Annotated[
        float, typer.Option(help="Votes: a label with at most this share is wrong when another class has a majority.")
    ] = FlagParams.max_support,
    min_majority: Annotated[
        float, typer.Option(help="Votes: ...and the annotators' class has at least this share (wrong needs both).")
    ] = FlagParams.min_majority,
    budget: Annotated[
        int | None,
        typer.Option(
            help="Flagged images to review, from the top of the queue; by default the estimated number of "
            "wrong labels, at most 1000, while the expected precision stays at least 0.5, and at least 100.",
            show_default=False,
        ),
    ] = FlagParams.budget,
    fit_weight: Annotated[
        float,
        typer.Option(
            help="Weight in the ranking of how the fold models fit each row's label while training on it "
            "(0: the out-of-fold probabilities alone). The flags themselves never use it.",
        ),
    ] = FlagParams.fit_weight,
    engine: EngineOpt = EngineParams.engine,
    ray_address: RayAddressOpt = EngineParams.ray_address,
    as_json: JsonOpt = False,
) -> None:
    """Score every active row for a likely wrong label by k-fold cross-fitting of the built-in CNN.

    Writes a new version with prob_<class>, mislabel_score, suggested_label and flagged columns, plus
    review_queue.parquet, flagged.html and flagged.png in its report folder. Out-of-fold probabilities are
    cached: a re-run with unchanged rows and settings trains nothing.

    With annotator votes (fercurate votes import) a label they clearly reject is flagged wrong with their
    class as the suggestion, a face they split on ambiguous (flag_kind); --votes only uses them alone.

    Also estimates how many labels are wrong (confident joint) and sizes a review budget, with the
    expected precision at each rank (queue_precision.png); flags past the budget stay in the manifest.

    Example: fercurate relabel-review flag --preset cpu --budget 300
    """
    from fercurate.relabel.flag import flag

    params = FlagParams(
        version=version,
        folds=folds,
        preset=preset,
        epochs=epochs,
        seed=seed,
        device=device,
        method=method,
        filter_by=filter_by,
        top_per_class=top_per_class,
        num_threads=num_threads,
        votes=votes,
        max_support=max_support,
        min_majority=min_majority,
        budget=budget,
        fit_weight=fit_weight,
    )
    with engine_for(engine, ray_address) as chosen, progress_bar() as progress:
        result = flag(Workspace(workspace), params, progress, chosen)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        f"[bold green]{result.version.version}[/] relabel-review flag of {result.parent}: "
        f"[bold]{result.flagged}[/] of {result.rows} active rows flagged in {result.seconds:.1f} s "
        + (
            f"({result.folds_trained} folds trained, {result.folds_cached} from cache; "
            f"out-of-fold accuracy {result.oof_accuracy:.1%})"
            if params.votes != "only"
            else "(annotator votes only)"
        )
    )
    if result.by_pair:
        out.print(counts_table("Flagged, given->suggested", result.by_pair))
    if result.estimated_by_pair:
        out.print(counts_table("Estimated wrong labels, given->true (confident joint)", result.estimated_by_pair))
    if params.votes != "only":  # a model's queue (--votes only trains none and estimates nothing)
        precision = Table(title="Review queue: expected precision of the top k")
        for name in ("rank k", "expected precision", "expected wrong found"):
            precision.add_column(name, justify="right")
        for row in result.precision_table:
            precision.add_row(
                str(row["rank"]), f"{row['expected_precision']:.3f}", f"{row['expected_wrong_found']:.0f}"
            )
        out.print(precision)
        out.print(
            f"estimated wrong labels: [bold]{result.estimated_wrong}[/] (confident joint; "
            f"{result.expected_wrong:.0f} by the calibrated per-image probabilities, anchors the surest "
            f"{result.anchor_share:.0%} of each class); "
            f"review budget: [bold]{result.budget}[/] of {result.flagged} flagged "
            "(the rest stay flagged; --budget N to change it)"
        )
        out.print(f"expected precision plot: {result.precision_png}")
    out.print(f"review queue: {result.queue_path}")
    out.print(f"contact sheet: {result.html_path}")
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print("next: fercurate relabel-review serve")


@command("serve", ServeParams, group=relabel_app)
def relabel_serve_cmd(
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Flag version, or one descending from it.", show_default="latest"),
    ] = ServeParams.version,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = ServeParams.port,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default browser.")
    ] = ServeParams.open_browser,
) -> None:
    """Serve a local page to decide each flagged image: 1-9 relabel, k keep, x remove, u undo, arrows move.

    Listens on 127.0.0.1 only; the printed URL carries a random access token. Every decision is written
    to the workspace's decision log at once, so Ctrl-C or a closed browser loses nothing. Stop with Ctrl-C.

    Example: fercurate relabel-review serve --port 8765 --open
    """
    from fercurate.relabel.serve import serve

    def ready(server: Any) -> None:
        state = server.state
        out.print(
            f"reviewing {len(state.items)} flagged images of {state.flag_version}; decisions go to {state.log.path}"
        )
        out.print(f"open [bold]{server.url}[/]  (Ctrl-C to stop)", soft_wrap=True)

    serve(Workspace(workspace), ServeParams(version=version, port=port, open_browser=open_browser), on_ready=ready)
    out.print("stopped; every decision is saved. next: fercurate relabel-review apply")


@command("apply", ApplyParams, group=relabel_app)
def relabel_apply_cmd(
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to apply the decisions to.", show_default="latest"),
    ] = ApplyParams.version,
    auto_accept: Annotated[
        float | None,
        typer.Option(
            help="A precision in (0, 1], e.g. 0.9: also relabel flagged, undecided rows whose suggestion is "
            "estimated right with at least this probability (recorded as decided by the model). The estimate is "
            "not a measurement: apply says how it measured on real faces when it takes a row (docs/relabel.md).",
            show_default=False,
        ),
    ] = ApplyParams.auto_accept,
    accept_votes: Annotated[
        int | None,
        typer.Option(
            help="Also relabel undecided rows to the annotators' class where at least K votes agree on it "
            "(recorded as decided by votes; needs fercurate votes import).",
            show_default=False,
        ),
    ] = ApplyParams.accept_votes,
    as_json: JsonOpt = False,
) -> None:
    """Write a new version with the review's decisions applied: relabels change label, removals set status.

    label_original keeps the scanned label and reason records each change and who decided it. Applying
    the same decisions again changes nothing.

    Example: fercurate relabel-review apply --auto-accept 0.9
    """
    from fercurate.relabel.apply import apply

    result = apply(
        Workspace(workspace), ApplyParams(version=version, auto_accept=auto_accept, accept_votes=accept_votes)
    )
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        f"[bold green]{result.version.version}[/] relabel-review apply to {result.parent}: "
        f"{result.relabeled_by_human} relabeled and {result.removed} removed by people, "
        f"{result.relabeled_by_model} relabeled by the model, {result.relabeled_by_votes} by votes, "
        f"{result.kept} kept, "
        f"{result.already_applied} already in effect"
    )
    if result.auto_expected_precision is not None:
        out.print(f"expected precision of the model's relabels: {result.auto_expected_precision:.3f}")
    if result.changes:
        out.print(counts_table("Changes", result.changes))
    if result.skipped:
        out.print(counts_table("Decisions skipped", result.skipped))
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- votes (annotator votes: fercurate.votes) --------------------------------------------------------
votes_app = typer.Typer(
    cls=HelpGroup,
    help="Annotator votes (FER+): attach them to a version, then flag, apply and train with them.\n\n"
    "Example: fercurate votes import ~/FERPlus/fer2013new.csv",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(votes_app, name="votes")


@command("import", VotesParams, group=votes_app)
def votes_import_cmd(
    votes: Annotated[
        Path, typer.Argument(help="FER+'s fer2013new.csv, its data folder (FER2013Train/ ...), or one label.csv.")
    ],
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to attach the votes to (v0003, 3, -1).", show_default="latest"),
    ] = VotesParams.version,
    scheme: Annotated[str, typer.Option(help=f"How vote_majority is read: {choices(SCHEMES)}.")] = VotesParams.scheme,
    mapping: Annotated[
        str | None,
        typer.Option(
            "--map", help="FER+ class -> dataset class, as merge-affectnet's (contempt=disgust).", show_default=False
        ),
    ] = VotesParams.mapping,
    max_distance: Annotated[
        float, typer.Option(help="Largest RMS grey-level difference of a pixel match.")
    ] = VotesParams.max_distance,
    min_margin: Annotated[
        float, typer.Option(help="Rows within this of the nearest are equally near (copies of one photo).")
    ] = VotesParams.min_margin,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; write no version.")] = VotesParams.dry_run,
    as_json: JsonOpt = False,
) -> None:
    """Attach FER+ annotator votes to a version's rows and write a new version.

    fer2013new.csv pairs with a version scanned from fer2013.csv by row order (Usage must agree); FER+
    images with label.csv are matched to any layout (the Kaggle JPEG folders, say) by pixels. Adds
    votes_<class> counts, vote_n, vote_majority, vote_agreement, vote_entropy and how each row was
    matched; rows without votes hold nulls. The per-image matches go to vote_matches.csv in the report.

    Example: fercurate votes import ~/FERPlus/data --scheme majority
    """
    from fercurate.votes import VotesParams, import_votes

    params = VotesParams(
        votes=votes,
        version=version,
        scheme=scheme,
        mapping=mapping,
        max_distance=max_distance,
        min_margin=min_margin,
        dry_run=dry_run,
    )
    with progress_bar() as progress:
        result = import_votes(Workspace(workspace), params, progress)
    if as_json:
        print_json(result.to_dict())
        return
    head = result.version.version if result.version else "dry run"
    out.print(
        f"[bold green]{head}[/] votes import of {result.source} into {result.parent} (by {result.method}): "
        f"{result.matched} of {result.entries} matched, {result.unmatched} unmatched, {result.ambiguous} ambiguous; "
        f"{result.rows_with_votes} of {result.rows} rows have votes ({result.seconds:.1f} s)"
    )
    if result.distance:
        out.print(
            "match distance (RMS grey levels): "
            + ", ".join(f"{k} {v:g}" for k, v in result.distance.items())
            + (f"; smallest margin {result.min_margin:g}" if result.min_margin is not None else "")
        )
    out.print(counts_table(f"vote_majority ({result.scheme}) of active rows", result.by_majority))
    out.print(f"active rows whose label differs from the vote majority: {result.majority_disagrees}")
    mapped = ", ".join(f"{k}->{v or '-'}" for k, v in result.mapping.items())
    out.print(f"class mapping: {mapped}", soft_wrap=True)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- dedup -----------------------------------------------------------------------------------------
def _range(name: str) -> str:
    lo, hi = RANGES[name]
    return f"{lo:g}-{hi:g}"


@command("dedup", DedupParams, EngineParams)
def dedup_cmd(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to deduplicate (v0003, 3, -1).", show_default="latest"),
    ] = DedupParams.version,
    hasher: Annotated[
        str, typer.Option(help=f"Perceptual hash stored and searched: {choices(HASHERS)}.")
    ] = DedupParams.hasher,
    radius: Annotated[
        int, typer.Option(help=f"Hamming radius of the candidate search on that hash ({_range('radius')}).")
    ] = DedupParams.radius,
    shift_radius: Annotated[
        int,
        typer.Option(help=f"Hamming radius of the shift-compensated DCT hash search ({_range('shift_radius')})."),
    ] = DedupParams.shift_radius,
    detail_radius: Annotated[
        int,
        typer.Option(
            help=f"Largest distance of the 255-bit DCT detail hashes of a candidate pair ({_range('detail_radius')})."
        ),
    ] = DedupParams.detail_radius,
    min_similarity: Annotated[
        float,
        typer.Option(help=f"Smallest normalised cross-correlation of a duplicate pair ({_range('min_similarity')})."),
    ] = DedupParams.min_similarity,
    max_residual: Annotated[
        float,
        typer.Option(
            help="Largest unexplained share of any 8x8 window of an aligned pair, relative to an average one: "
            f"another frame's changed mouth or eyes fail it ({_range('max_residual')})."
        ),
    ] = DedupParams.max_residual,
    max_shift: Annotated[
        int, typer.Option(help=f"Largest shift in pixels a copy may have ({_range('max_shift')}).")
    ] = DedupParams.max_shift,
    max_zoom: Annotated[
        float,
        typer.Option(
            help=f"Re-cropped copies (another face box) up to a zoom of 1 +- this; 0: off ({_range('max_zoom')})."
        ),
    ] = DedupParams.max_zoom,
    recrop_radius: Annotated[
        int, typer.Option(help=f"Hamming radius of the re-crop search ({_range('recrop_radius')}).")
    ] = DedupParams.recrop_radius,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Also find horizontally flipped copies (an augmentation leak).")
    ] = DedupParams.mirror,
    photos: Annotated[
        bool,
        typer.Option(
            "--photos",
            help="Tolerances for real photos (FER2013, FER+, AffectNet): "
            + describe(DedupParams(**PHOTO_TOLERANCES))
            + " unless given (re-crops with another face box, stock watermarks, tone curves). Not for the "
            "demo's drawn faces, whose faint burst frames pass them.",
        ),
    ] = False,
    related: Annotated[
        bool,
        typer.Option(
            "--related/--no-related",
            help="Also link other frames of one sitting (same person, backdrop and light, another expression): "
            "never removed; grouped in related_group for split --group-by related.",
        ),
    ] = DedupParams.related,
    conflicts: Annotated[
        str,
        typer.Option(help=f"Groups whose members carry different labels: {choices(CONFLICT_MODES)}."),
    ] = DedupParams.conflicts,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; write no version.")] = (DedupParams.dry_run),
    engine: EngineOpt = EngineParams.engine,
    ray_address: RayAddressOpt = EngineParams.ray_address,
    as_json: JsonOpt = False,
) -> None:
    """Find the same photo twice (re-encoded, brightened, resized, shifted, re-cropped; flipped with --mirror).

    Hashes every active row (cached by sha256), verifies each candidate pair pixel by pixel, groups
    duplicates transitively and keeps one member per group: the group's majority label, then train
    over val over test, then the larger original, then path order; the others are removed as
    duplicate_of:<image_id>. Reports leakage between splits and label conflicts, and writes a pairs
    table and contact sheets.

    Other frames of one sitting (the same person and backdrop, another expression) are not
    duplicates: they are linked as related (dedup_related.parquet, the related_group column), never
    removed; fercurate split --group-by related keeps each sitting in one split.

    On real photos use --photos (the re-crop search and a looser residual for watermarks and tone
    curves): on FER2013's Training rows it finds 0.97 of the same-photo pairs at precision 0.995,
    where the defaults, tuned on the demo's drawn faces, find 0.38.

    Example: fercurate dedup --mirror --photos
    """
    from fercurate.dedup import dedup

    if photos:  # the photo tolerances, for the options not given on the command line
        sources = {k: ctx.get_parameter_source(k) for k in PHOTO_TOLERANCES}
        unset = {k for k, source in sources.items() if source is None or source.name == "DEFAULT"}
        max_zoom = PHOTO_TOLERANCES["max_zoom"] if "max_zoom" in unset else max_zoom
        max_residual = PHOTO_TOLERANCES["max_residual"] if "max_residual" in unset else max_residual
    params = DedupParams(
        version=version,
        hasher=hasher,
        radius=radius,
        shift_radius=shift_radius,
        detail_radius=detail_radius,
        min_similarity=min_similarity,
        max_residual=max_residual,
        max_shift=max_shift,
        max_zoom=max_zoom,
        recrop_radius=recrop_radius,
        mirror=mirror,
        related=related,
        conflicts=conflicts,
        dry_run=dry_run,
    )
    with engine_for(engine, ray_address) as chosen, progress_bar() as progress:
        result = dedup(Workspace(workspace), params, progress, chosen)
    if as_json:
        print_json(result.to_dict())
        return
    head = "[bold yellow]dry run[/]" if result.version is None else f"[bold green]{result.version.version}[/]"
    kinds = ", ".join(f"{k} {v}" for k, v in result.pairs_by_kind.items()) or "none"
    out.print(
        f"{head} dedup of {result.parent}: {result.active} active rows ({result.hashed} hashed, "
        f"{result.hashes_cached} from the cache), {result.pairs} duplicate pairs ({kinds}) in "
        f"{result.groups} groups of up to {result.largest_group}; {result.removed} rows "
        f"{'would be ' if result.dry_run else ''}removed ({result.seconds:.1f} s)"
    )
    if result.related_pairs:
        out.print(
            f"{result.related_pairs} related links (other frames of one sitting, not removed) in "
            f"{result.related_groups} related groups of {result.rows_in_related_groups} rows, "
            f"{result.related_groups_across_splits} across splits (split --group-by related keeps them together)"
        )
    leak = Table(title="Leakage: images with a duplicate in the other split", title_justify="left")
    for col in ("splits", "images in first", "images in second", "groups"):
        leak.add_column(col, justify="left" if col == "splits" else "right")
    for entry in result.leakage:
        first, second = (k for k in entry if k in SPLITS)
        leak.add_row(entry["splits"], str(entry[first]), str(entry[second]), str(entry["groups"]))
    out.print(leak)
    if result.conflicts:
        shown = result.conflicts[:15]
        table = Table(
            title=f"Label conflicts ({len(result.conflicts)} groups, --conflicts {result.conflict_mode})",
            title_justify="left",
        )
        for col in ("group", "size", "labels", "splits", "resolution"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for c in shown:
            table.add_row(
                c["group"],
                str(c["size"]),
                ", ".join(f"{k} {v}" for k, v in c["labels"].items()),
                ", ".join(f"{k} {v}" for k, v in c["splits"].items()),
                c["resolution"],
            )
        out.print(table)
        if len(result.conflicts) > len(shown):
            out.print(f"... and {len(result.conflicts) - len(shown)} more (see --json)")
    else:
        out.print("label conflicts: none")
    for name, path in result.reports.items():
        out.print(f"{name.replace('_', '-')}: {path}")
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")


# -- stage commands are added above this line, one section each --------------------------------


def tune_allocator() -> bool:
    """Keep the freed blocks of large numpy temporaries in the heap (glibc only); True when applied.

    glibc serves allocations above a threshold (128 KB at first) with mmap and unmaps them when they
    are freed, so each large temporary of a batch loop is page-faulted in afresh. In ``dedup`` of 20K
    images that was 190,000 minor page faults and 0.5-1.0 s of system time, against 55,000 and about
    0.3 s with these settings (``bench/bench_dedup.py speed``). Blocks above 32 MB still go to mmap,
    and the heap gives memory back once 512 MB lie free at its top.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


def main() -> None:
    """Console-script entry point."""
    tune_allocator()
    try:
        app()
    finally:
        # At exit the interpreter's last garbage collection walks every object that pandas, pyarrow
        # and the stage made, 0.1-0.2 s a command; nothing it could free matters once we exit.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
