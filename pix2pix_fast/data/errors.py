"""Errors a user's data can cause; the CLI prints them as one line."""


class DataError(ValueError):
    """A missing folder, a corrupt image, a wrong layout or size: the message names the file."""
