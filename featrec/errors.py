"""Errors a user can act on: each message names where (file, field) and what was expected."""


class FeatrecError(Exception):
    """Base class; the CLI prints the message on one line and exits with status 2.

    The message is one line whatever it quotes: line breaks and other unprintable
    characters of a key or value it names (a YAML key ``"\\n"``) are written as escapes."""

    def __init__(self, message: object = "") -> None:
        super().__init__(printable(str(message)))


def printable(text: str) -> str:
    """``text`` with each unprintable character written as its escape (``\\n``, ``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecError(FeatrecError):
    """The spec file or a ``--set`` override is invalid."""


class DataError(FeatrecError):
    """A data file is missing, corrupt, unreadable, or does not match the spec."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line
    errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
