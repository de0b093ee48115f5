"""Named exceptions for mistakes a user can cause.

The CLI turns any `DuogenError` into a one-line message and a non-zero exit;
everything else is a bug and keeps its traceback.
"""


class DuogenError(Exception):
    """Base class: a problem with the user's input, files or configuration."""


class ConfigError(DuogenError):
    """A bad configuration key or value."""


class DataError(DuogenError):
    """A data set, media file or prompt that cannot be used as given."""


class CheckpointError(DuogenError):
    """A model directory or checkpoint that cannot be loaded."""


class TrainingError(DuogenError):
    """A training run that had to stop (for example a non-finite loss)."""
