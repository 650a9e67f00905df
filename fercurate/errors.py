"""The one error hierarchy of fercurate.

The CLI catches :class:`FercurateError`, prints its message in red without a traceback and exits 1.
Anything else is a bug and keeps its traceback. A message names the bad value, where it came from,
and what would be accepted.
"""

from __future__ import annotations


class FercurateError(Exception):
    """A problem the user can fix: bad input, a missing prerequisite, a busy workspace."""


class InputError(FercurateError):
    """A bad argument, option value or input file."""


class DatasetError(FercurateError):
    """A dataset folder or CSV that cannot be read as a FER dataset."""


class WorkspaceError(FercurateError):
    """A missing, locked or inconsistent workspace, or an unknown manifest version."""


class DeviceError(FercurateError):
    """A requested compute device that is not available."""
