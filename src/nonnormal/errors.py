"""The exception types a user sees: bad input, named with its fix; a long command stopped by a signal."""


class NonnormalError(ValueError):
    """Invalid input or an unsupported request.

    The message is one line that names the problem and the fix; the command line prints it
    without a traceback and exits with status 2.
    """


class Stopped(NonnormalError):
    """A long command stopped by a signal after saving its work; the command line exits 75 (``EX_TEMPFAIL``).

    ``reason`` is the message without its hint on how to continue (a job that trains models
    gives its own: rerun the same command, where ``train`` says ``--resume``).
    """

    exit_code = 75

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message
