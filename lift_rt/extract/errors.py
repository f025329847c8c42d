"""The one error type of ``lift_rt.extract``."""


class ExtractError(ValueError):
    """A run that cannot start or go on; the message names the flag or file and the fix."""
