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
    """A user error about the parameter ``option``: ``str(err)`` is ``"<lead><option> <rest>"``.

    Args:
        option: the parameter's Python name (``nq``, ``sample_rate``); the CLI flag is ``--`` + the name with
            dashes for underscores.
        rest: the rest of the sentence after the name (``"9 is out of range: ..."``, ``"DIR."``).
        lead: words before the name, when the sentence does not start with it (``"...; pass "``).
    """

    def __init__(self, option: str, rest: str, lead: str = "") -> None:
        self.option, self.rest, self.lead = option, rest, lead
        super().__init__(f"{lead}{option} {rest}")

    def for_cli(self) -> str:
        """The message as the command line shows it: the parameter named by its flag."""
        return f"{self.lead}--{self.option.replace('_', '-')} {self.rest}"
