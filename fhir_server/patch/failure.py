"""Why a patch operation failed: the two patch engines share one vocabulary of failures."""

from __future__ import annotations


class PatchFailure(Exception):
    """One operation's failure; the engine adds which operation it was before it reaches a client."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def malformed(reason: str) -> PatchFailure:
    """The patch document itself is wrong: 400."""
    return PatchFailure(400, "invalid", reason)


def inapplicable(reason: str) -> PatchFailure:
    """A well-formed patch that does not apply to this resource: 422."""
    return PatchFailure(422, "processing", reason)
