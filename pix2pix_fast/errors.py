"""The errors a user can cause, below every package that raises them: one module, one base.

Each names the file, folder or option at fault in one line. The CLI prints
any `UserError` as `pix2pix-fast: error: <message>` and exits with status 2;
internal invariants stay asserts and tracebacks.
"""


class UserError(ValueError):
    """A bad option, file, checkpoint, dataset or output location; the message is one line."""


class WriteError(UserError):
    """A file could not be written (disk full, permissions, a folder in the way); nothing partial is left."""


class ConfigError(UserError):
    """A bad option or config file."""


class DataError(UserError):
    """A missing folder, a corrupt image, a wrong layout or size: the message names the file."""


class CheckpointError(UserError):
    """A missing, corrupt or incompatible checkpoint."""


class ReferenceCheckpointError(CheckpointError):
    """A reference implementation's checkpoint that does not fit the requested or inferred model."""


class ExportError(UserError):
    """The exporter failed or its output does not match PyTorch."""


class MissingWeightsError(UserError):
    """No usable Inception weights, so FID/KID cannot be computed."""
