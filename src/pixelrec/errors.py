"""The one exception type that reaches users as a single line (exit status 2, no traceback)."""


class UserError(Exception):
    """Bad input or configuration: the message names the file, row, key or item at fault."""

