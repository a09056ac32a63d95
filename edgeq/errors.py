"""Typed errors. The library raises; only ``edgeq.cli`` prints them.

Every error carries a one-line ``message`` (what went wrong) and a ``hint``
(what to do about it), and an ``exit_code``: 2 for bad input, 1 for a check
that ran and failed.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class: a user-facing problem with a message and a fix."""

    exit_code: int = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" -- {' '.join(self.hint.split())}"
        return text


class ModelError(EdgeqError):
    """The model file is missing, unreadable, invalid or unsupported."""


class CalibrationError(EdgeqError):
    """Calibration or evaluation data does not fit the model."""


class TargetError(EdgeqError):
    """Unknown or malformed target definition."""


class ProviderError(EdgeqError):
    """An execution provider the user asked for is not available."""


class QuantizationError(EdgeqError):
    """Quantization could not produce a valid model."""


class BundleError(EdgeqError):
    """A bundle is corrupt, tampered with or cannot be written."""


class OutputExistsError(EdgeqError):
    """The output path exists and ``--force`` was not given."""


class CheckFailed(EdgeqError):
    """A verification ran and its result is outside the tolerances (exit 1)."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of what ``e`` says (its type's name when it says nothing), at most ``limit`` characters: how
    another library's error is quoted inside one of edgeq's one-line messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()[:limit]
