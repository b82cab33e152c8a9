"""One exception type for mistakes a user can fix: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a file, a flag, a config): the message names what was wrong and what was expected."""
