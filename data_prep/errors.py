"""Errors that stop a preparation run (bad arguments, unusable source or output)."""


class PrepError(Exception):
    """A usage problem: the run cannot start or cannot produce a dataset."""


class NoUsableImages(PrepError):
    """Every input was skipped, so there is nothing to write."""
