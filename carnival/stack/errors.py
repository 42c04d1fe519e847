"""Errors the stack commands report to a person: one clear message, no stack trace."""

import shutil


class StackError(Exception):
    """A stack operation failed for a reason the operator can act on."""


def require_tool(name: str, hint: str) -> str:
    """The path of the program ``name``, or a StackError that says how to install it."""
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` was not found on PATH: {hint}")
    return found
