"""The errors seqrec raises for input a user can fix, and the exit codes ``seqrec`` maps them to.

Every error here is a ``SeqrecError``. Its message is the whole report (what is wrong, where, what to
do); ``path``, ``line`` and ``field`` say the same for callers that want to act on it. Errors that are
bad values (config, data, run directory) are also ``ValueError``s, as the style guide asks of user
errors, so ``except ValueError`` keeps working.

Exit codes of the command line (``seqrec.cli.main``):

====  ===========================================================================================
0     success
1     internal failure: a bug, or an environment problem nobody anticipated; Python prints the
      traceback (nothing is caught)
2     bad input or a failed run the user can act on: any ``SeqrecError``, any other ``ValueError``
      (the library's checks of arguments), any ``OSError`` (missing file, full disk, no permission).
      One line ``seqrec <command>: error: <message>`` on stderr; ``-v`` adds the traceback
130   interrupted (Ctrl-C)
====  ===========================================================================================
"""

from __future__ import annotations

from pathlib import Path


class SeqrecError(Exception):
    """Base of the errors a user can act on; ``str(error)`` is the message to show.

    Attributes:
        path: the offending file or directory, or None.
        line: 1-based line number in ``path`` (the row of a Parquet file), or None where the file has no
            lines (pickles, ``.npy`` arrays) or none applies.
        field: the offending field, key, column or setting (``"model.maxlen"``), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field


class ConfigError(SeqrecError, ValueError):
    """A configuration value, key or file is invalid; ``field`` is ``section.key`` where one is known."""


class DataError(SeqrecError, ValueError):
    """Input data breaks its format; the message names the file, the line and the field."""


class CheckpointError(SeqrecError):
    """A checkpoint cannot be written or read; the message says which file and why.

    Not a ``ValueError``: a failed write (full disk) is no bad value, and a checkpoint that does not
    load is reported as what it is rather than as a bad argument.
    """


class RunDirError(SeqrecError, ValueError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, not writable, ...)."""


class NonFiniteLossError(SeqrecError):
    """Training produced a NaN or infinite loss; the message names the step, learning rate and loss."""
