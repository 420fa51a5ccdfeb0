"""Typed errors: every failure a user can cause is one of these.

The CLI turns a :class:`JediError` into a one-line message and a non-zero exit code;
any other exception escaping to the CLI is a bug in jedi-deploy.
"""


class JediError(Exception):
    """Base class of every error caused by bad input, files or environment."""

    exit_code = 1


class InputError(JediError):
    """A path, file or argument given by the user is missing or malformed."""


class VideoDecodeError(InputError):
    """A video file cannot be opened or decoded."""


class BudgetError(InputError):
    """A request or a file asks for more work than its budget allows (windows, pixels, bytes, time);
    nothing was computed. docs/ARCHITECTURE.md lists every budget."""


class AnnotationError(InputError):
    """An annotation list or class-name file is malformed."""


class CheckpointError(JediError):
    """A checkpoint or bundle does not match what it is loaded into."""


class CacheMismatchError(JediError):
    """An embedding cache was built for other experts/datasets than requested."""


class ConfigError(JediError):
    """A configuration value is invalid."""


class ExportValidationError(JediError):
    """An exported model does not match PyTorch within tolerance; nothing was written."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


class QuantizationGateError(JediError):
    """An INT8 model lost more accuracy than allowed, even with its most sensitive nodes kept in
    float; no INT8 file was written. ``reports`` holds the gate's tables."""

    exit_code = 3

    def __init__(self, message: str, reports: list | None = None):
        super().__init__(message)
        self.reports = reports or []


class MissingDependencyError(JediError):
    """An optional dependency (onnxruntime, tensorrt, ...) is not installed."""
