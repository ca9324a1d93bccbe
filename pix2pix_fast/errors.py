"""The errors a user can cause, below every package that raises them.

Each names the file, folder or option at fault in one line. The CLI prints
any `UserError` as `pix2pix-fast: error: <message>` and exits with status 2;
internal invariants stay asserts and tracebacks.
"""


class UserError(ValueError):
    """A bad option, file, checkpoint, dataset or output location; the message is one line."""


class WriteError(UserError):
    """A file could not be written (disk full, permissions, a folder in the way); nothing partial is left."""
