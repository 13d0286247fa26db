"""Errors that the command line reports as one line and a non-zero exit."""


class SslBenchError(Exception):
    """Base class of every error caused by the user's input or environment.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a
    traceback, so each message must name the option at fault and the valid values.
    """


class UnknownNameError(SslBenchError):
    """A task, backbone, dataset or evaluator name that no registry holds."""


class IncompatibleError(SslBenchError):
    """A task/backbone/dataset combination that cannot work (e.g. MAE on a CNN)."""


class DataError(SslBenchError):
    """A missing, empty, malformed or corrupt dataset."""


class OptionError(SslBenchError):
    """A bad task hyperparameter or command-line option value."""


class Interrupted(SslBenchError):
    """Training was stopped with Ctrl-C after a checkpoint was saved (exit status 130)."""


class Diverged(SslBenchError):
    """The training loss became NaN or infinite."""
