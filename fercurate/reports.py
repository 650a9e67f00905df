"""What the stages show: figures, the class-by-split charts, and results as JSON-safe dicts.

Figures use Matplotlib's object API (:class:`~matplotlib.figure.Figure` on an Agg canvas), never
``pyplot`` and never ``matplotlib.use``: a library must not switch the process's backend, and a
figure that belongs to no global registry needs no closing. Files are written with the one atomic
write of :func:`fercurate.manifest.atomic_write`.

:func:`to_dict` turns any result dataclass into what ``--json`` prints, so the fourteen result
classes share one set of rules for versions, paths, frames and numpy values.
"""

from __future__ import annotations

import dataclasses
import io
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fercurate.manifest import SPLITS, atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# -- figures ---------------------------------------------------------------------------------------
def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Matplotlib figure drawn on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def wrap_label(text: str, width: int = 16) -> str:
    """``text`` broken onto lines of at most ``width`` characters (at spaces and hyphens), so tick labels
    of long stage or class names stay within their own bar group instead of running into the next."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


ONE_SEED = "one seed, no interval"


def figure_png(fig: Figure, **savefig: Any) -> bytes:
    """The figure as PNG bytes (``savefig`` options such as ``dpi`` or ``bbox_inches`` pass through)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    return buf.getvalue()


def save_figure(fig: Figure, path: Path, **savefig: Any) -> Path:
    """Write the figure as a PNG, atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **savefig))
    return path


def split_chart(before: pd.DataFrame, after: pd.DataFrame, path: Path, title: str) -> Path:
    """A PNG of grouped bars: rows per class before and after, one panel per split (``fercurate split``)."""
    return save_figure(split_figure(before, after, title), path)


def split_figure(before: pd.DataFrame, after: pd.DataFrame, title: str) -> Figure:
    """The figure of :func:`split_chart`."""
    classes = [c for c in after.index if c != "all"]
    fig = new_figure(4.2 * len(SPLITS), 4.4)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(SPLITS), sharey=False)
    x = np.arange(len(classes))
    width = 0.4
    for ax, split_name in zip(axes, SPLITS, strict=True):
        b = before.reindex(classes)[split_name].fillna(0).to_numpy()
        a = after.reindex(classes)[split_name].fillna(0).to_numpy()
        ax.bar(x - width / 2, b, width, label="before", color="#9e9e9e")
        ax.bar(x + width / 2, a, width, label="after", color="#1f77b4")
        share_b = before.loc["all", split_name] / max(before.loc["all", "total"], 1) * 100
        share_a = after.loc["all", split_name] / max(after.loc["all", "total"], 1) * 100
        ax.set_title(f"{split_name}: {share_b:.1f}% -> {share_a:.1f}% of rows")
        ax.set_xticks(x)
        # wrapped, not rotated: rotated labels of long names reach under their neighbours
        ax.set_xticklabels([wrap_label(c, 9) for c in classes], fontsize=8)
        ax.set_ylabel("images")
    fig.suptitle(title)
    # outside the panels (above them): on a panel it would cover the bars of the largest classes
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right", ncol=2, frameon=False)
    return fig


def merge_chart(before: pd.DataFrame, after: pd.DataFrame, path: Path, title: str) -> Path:
    """Bars of active rows per class before (plain) and after (hatched), stacked by split (merge-affectnet)."""
    from matplotlib.patches import Patch

    classes = sorted(set(before.index) | set(after.index))
    fig = new_figure(max(6.0, 1.3 * len(classes) + 3), 4.2)
    ax = fig.subplots()
    x = np.arange(len(classes))
    colours = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
    for offset, table, hatch in ((-0.2, before, ""), (0.2, after, "//")):
        bottom = np.zeros(len(classes))
        for s in SPLITS:
            values = np.array(
                [float(table.loc[c, s]) if c in table.index and s in table.columns else 0.0 for c in classes]
            )
            ax.bar(x + offset, values, 0.38, bottom=bottom, color=colours[s], hatch=hatch, edgecolor="white")
            bottom += values
    ax.set_xticks(x, [wrap_label(c, 12) for c in classes])
    ax.set_ylabel("active rows")
    ax.set_title(title)
    handles = [Patch(color=colours[s], label=s) for s in SPLITS]
    handles += [
        Patch(facecolor="white", edgecolor="grey", label="before"),
        Patch(facecolor="white", edgecolor="grey", hatch="//", label="after"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


# -- results as JSON-safe dicts --------------------------------------------------------------------
def to_dict(
    result: Any,
    *,
    drop: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    seconds_digits: int = 3,
    **extra: Any,
) -> dict[str, Any]:
    """A result dataclass as the plain dict ``--json`` prints.

    The fields in order (``dataclasses.fields``), each made JSON-safe by :func:`json_safe`, with these
    conventions: a field ``version`` holding a version record (or None where it is typed as one: a dry
    run) becomes ``version`` (its name) and ``path``; ``seconds`` is rounded to ``seconds_digits``.

    Args:
        result: a dataclass instance.
        drop: fields left out.
        rename: field -> key in the output.
        seconds_digits: rounding of a ``seconds`` field.
        **extra: keys to set (a field's value replaced in place, or a new key at the end), e.g. a
            property such as ``added``.
    """
    rename = rename or {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        if f.name in drop:
            continue
        value = getattr(result, f.name)
        if f.name == "version" and (_is_version(value) or (value is None and "VersionInfo" in str(f.type))):
            out["version"] = value.version if value is not None else None
            out["path"] = value.path if value is not None else None
        elif f.name == "seconds" and isinstance(value, float):
            out[rename.get(f.name, f.name)] = round(value, seconds_digits)
        else:
            out[rename.get(f.name, f.name)] = json_safe(value)
    for key, value in extra.items():
        out[key] = json_safe(value)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with paths as strings, numpy scalars and arrays as Python values, tuples as lists,
    frames as :func:`nested` dicts, version records as their names and dataclasses as :func:`to_dict`."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if _is_version(value):
        return value.version
    if isinstance(value, pd.DataFrame):
        return nested(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def nested(frame: pd.DataFrame, digits: int | None = None) -> dict[str, dict[str, Any]]:
    """A frame as ``{row: {column: value}}`` with Python values; missing values as None.

    Args:
        digits: round every value to this many digits (as floats); default: keep whole numbers whole.
    """
    out: dict[str, dict[str, Any]] = {}
    for idx, row in frame.iterrows():
        cells: dict[str, Any] = {}
        for k, v in row.items():
            cells[str(k)] = _cell(v, digits)
        out[str(idx)] = cells
    return out


def _cell(value: Any, digits: int | None) -> Any:
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    if digits is not None:
        return round(float(value), digits)
    return value.item() if isinstance(value, np.generic) else value


def _is_version(value: Any) -> bool:
    from fercurate.workspace import VersionInfo

    return isinstance(value, VersionInfo)
