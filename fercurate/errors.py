"""The one error hierarchy of fercurate.

The CLI catches :class:`FercurateError`, prints its message in red without a traceback and exits 1.
Anything else is a bug and keeps its traceback. A message names the bad value, where it came from,
and what would be accepted.

The library speaks of values and parameters, not of command-line flags: a message about an option
names the parameter as the params class spells it (``folds 1 is too small``) and passes it as
``param``; the CLI, which knows the flags, shows it as the flag (``--folds 1 is too small``).
"""

from __future__ import annotations


class FercurateError(Exception):
    """A problem the user can fix: bad input, a missing prerequisite, a busy workspace.

    Args:
        message: what is wrong and what would be accepted.
        param: the parameter(s) the message names, as the params class spells them; the CLI puts
            the matching flag in their place.
    """

    def __init__(self, message: str, *, param: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())


class InputError(FercurateError):
    """A bad argument, option value or input file."""


class DatasetError(FercurateError):
    """A dataset folder or CSV that cannot be read as a FER dataset."""


class WorkspaceError(FercurateError):
    """A missing, locked or inconsistent workspace, or an unknown manifest version."""


class DeviceError(FercurateError):
    """A requested compute device that is not available."""
