"""Errors that the command line reports as a one-line message instead of a traceback."""


class MimkitError(Exception):
    """Base of the errors a user can fix: bad config, bad input, a diverged run."""


class NonFiniteError(MimkitError):
    """Numbers became NaN or infinite: nothing non-finite is applied or written as if it were fine."""


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; the run stops before the bad update is applied."""


class CheckpointError(MimkitError, ValueError):
    """A file that is not a readable checkpoint of the expected kind."""


class DataError(MimkitError):
    """Input data that cannot be used: a folder without images, no readable image at all, a bad data subset."""
