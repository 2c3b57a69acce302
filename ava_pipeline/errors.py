"""One exception hierarchy for the whole package.

Every message names the file (or object) involved and says what to do next. The CLI prints
``str(error)`` as one line and exits non-zero; it never shows a traceback unless ``--debug``.
"""


class AvaPipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AvaPipelineError):
    """A configuration file or value is invalid (unknown key, wrong type, unknown zoo name)."""


class WeightsError(AvaPipelineError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class VideoDecodeError(AvaPipelineError):
    """A video cannot be opened or decoded (missing, empty, corrupt, no video stream, too short)."""


class InputFormatError(AvaPipelineError):
    """A CSV / pbtxt / JSON input file is malformed; the message names file and line."""


class DependencyMissingError(AvaPipelineError):
    """An optional dependency (detectron2, ray, ...) is needed but not installed."""


class InputFormatWarning(UserWarning):
    """Input the official evaluator accepts silently but that is probably a mistake (message names file:line)."""
