"""The one exception type a user sees: bad input, named with its fix."""


class NonnormalError(ValueError):
    """Invalid input or an unsupported request.

    The message is one line that names the problem and the fix; the command line prints it
    without a traceback and exits with status 2.
    """
