"""User-facing errors: one line that names the file or field and says what to do."""


class MmadError(Exception):
    """An error caused by the user's input or set-up; the CLI prints it as one line, no traceback."""


class ModelError(Exception):
    """A model call failed for this question only; the runner records it and goes on."""
