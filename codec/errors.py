"""Error types for user-caused failures.

Any error a user can cause (bad input file, wrong option, corrupted ``.codes`` file, ...)
is raised as :class:`CodecError` with a message that is ONE clear sentence.  The CLI prints
``codec: error: <message>`` on stderr and exits with status 2, without a traceback.

A bad value of a named parameter is an :class:`OptionError`: the library says ``nq 9 is out of range: ...``
(the parameter's Python name), and the CLI, which knows the value came from a flag, says
``--nq 9 is out of range: ...`` (:meth:`OptionError.for_cli`).  Library messages never name CLI flags.
"""
from __future__ import annotations

__all__ = ["CodecError", "OptionError"]


class CodecError(Exception):
    """A user-caused error; ``str(err)`` is one clear sentence meant for the user."""


class OptionError(CodecError, ValueError):
    """A bad value for the parameter ``option``: ``str(err)`` is ``"<option> <rest>"``.

    Args:
        option: the parameter's Python name (``nq``, ``sample_rate``); the CLI flag is ``--`` + the name with
            dashes for underscores.
        rest: the rest of the sentence, starting with the value (``"9 is out of range: ..."``).
    """

    def __init__(self, option: str, rest: str) -> None:
        self.option, self.rest = option, rest
        super().__init__(f"{option} {rest}")

    def for_cli(self) -> str:
        """The message as the command line shows it: the parameter named by its flag."""
        return f"--{self.option.replace('_', '-')} {self.rest}"
