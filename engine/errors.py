"""Errors a user can act on. Their message is shown as is: name the file and the problem."""


class SgraffitoError(Exception):
    """Base for every error whose message is meant for the user (dialog in the GUI, stderr in the CLI)."""


class InputError(SgraffitoError):
    """A file or argument the user gave cannot be used (corrupt, wrong size, unknown ids...)."""


class CheckpointError(SgraffitoError):
    """A checkpoint cannot be loaded: unsafe, truncated, or its keys/shapes do not match the model."""


class Cancelled(SgraffitoError):
    """A job was cancelled by the user; not a failure."""
