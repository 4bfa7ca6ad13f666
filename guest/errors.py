"""Errors of the guest core, each with a message that names what and where."""


class DocteurError(Exception):
    """Base class: every error here is meant to be shown to a user in one line."""


class ImageError(DocteurError):
    """The file is not a docteur image at all (too short, bad offsets, no PACK)."""


class IntegrityError(DocteurError):
    """The image is an image, but a byte of it is not what its hashes say."""


class ImageChanged(IntegrityError):
    """The image file was written while open: what was checked no longer holds."""


class NotFound(DocteurError):
    """An object or a path that the image does not hold."""
