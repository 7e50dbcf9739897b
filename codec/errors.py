"""Error type for user-caused failures.

Any error a user can cause (bad input file, wrong option, corrupted ``.codes`` file, ...)
is raised as :class:`CodecError` with a message that is ONE clear sentence.  The CLI prints
``codec: error: <message>`` on stderr and exits with status 2, without a traceback.
"""
from __future__ import annotations

__all__ = ["CodecError"]


class CodecError(Exception):
    """A user-caused error; ``str(err)`` is one clear sentence meant for the user."""
