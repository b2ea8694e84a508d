"""Errors that mean "the input was wrong", as opposed to a bug: the CLI prints them as one sentence, exit code 2."""


class UserError(ValueError):
    """Bad input from the user: an unknown name, a wrong path, an option out of range."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the model."""
