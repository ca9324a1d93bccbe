"""Errors a user's data can cause; the CLI prints them as one line."""
from pix2pix_fast.errors import UserError


class DataError(UserError):
    """A missing folder, a corrupt image, a wrong layout or size: the message names the file."""
