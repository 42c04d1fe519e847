"""Errors the stack commands report to a person: one clear message, no stack trace."""


class StackError(Exception):
    """A stack operation failed for a reason the operator can act on."""
