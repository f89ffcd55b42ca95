"""Errors a user can act on: one line that names the problem and what to do."""


class QwenplanError(Exception):
    """Base error. `str(err)` is the one line shown to the user."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


class InputError(QwenplanError):
    """Bad input: a flag value, a file, a name we do not know."""


class HardwareFileError(InputError):
    """A hardware document that does not validate; names the field."""


class InfeasibleError(QwenplanError):
    """Nothing fits, or a user's pin cannot be honoured."""

    exit_code = 3
