"""Errors a user can act on: each message names where (file, field) and what was expected."""


class FeatrecError(Exception):
    """Base class; the CLI prints the message on one line and exits with status 2."""


class SpecError(FeatrecError):
    """The spec file or a ``--set`` override is invalid."""


class DataError(FeatrecError):
    """A data file is missing, corrupt, unreadable, or does not match the spec."""
