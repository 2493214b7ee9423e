"""The one exception type a user sees: a one-paragraph message and a non-zero exit."""


class VisionlaunchError(Exception):
    """A problem with the user's input (config, data, paths) that they can fix.

    The message says what was wrong and how to fix it. The command line prints it without a traceback and
    exits with status 2.
    """

    exit_code = 2
