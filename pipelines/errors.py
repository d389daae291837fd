"""The exceptions fada raises for problems a user can fix.

Each carries a one-line message that says what was wrong, shows the bad value and
says what to do. The CLI maps them, in one place (`fada_cli.main`), to ``Error: …``
on stderr and an exit code; set ``FADA_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations


class FadaError(Exception):
    """Base class: a problem with the user's input, files or environment."""

    exit_code = 1


class UsageError(FadaError):
    """A command-line option or combination of options is invalid."""

    exit_code = 2


class InputFileError(FadaError):
    """A file the user named is missing, unreadable, corrupt or of the wrong kind."""


class MediaError(InputFileError):
    """A video or audio file cannot be decoded or holds unusable content."""


class ManifestError(InputFileError):
    """A clip manifest is missing, malformed or lacks a required column."""


class CheckpointError(InputFileError):
    """A checkpoint folder is missing, malformed, unsafe or of the wrong stage."""


class DeviceError(FadaError):
    """The requested device or dtype is not available on this machine."""
