"""The package version, kept in one place (read by setup and by qpack.__version__)."""

__version__ = "0.1.0"
