"""Exception types raised by qpack."""


class QpackError(Exception):
    """Base class of every error qpack raises on purpose."""


class FormatError(QpackError, ValueError):
    """A stored byte stream or ``.qpk`` file is damaged, truncated or not of the expected format.

    Subclasses ``ValueError`` so callers that validate input generically still catch it.
    """
