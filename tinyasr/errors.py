"""Every error tinyasr raises on bad input derives from TinyASRError.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; nothing else
should reach the user as a traceback.  Messages name the thing at fault (the
file, node, op, tensor or sample rate), because the user has to find it.
"""


class TinyASRError(Exception):
    """Base class: a problem with the user's input, not a bug in tinyasr."""

    exit_code = 1


class ModelFileError(TinyASRError):
    """A .tasr file is malformed, truncated, corrupted or of an unknown version."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class GraphError(TinyASRError):
    """A graph is inconsistent: a missing value, an unknown op, a bad attribute."""


class InputError(TinyASRError):
    """Inputs given to Model.run do not match the model's declared inputs."""


class ConversionError(TinyASRError):
    """A source model cannot be converted; the message names node, op and the supported set."""


class AudioError(TinyASRError):
    """An audio file or array cannot be used: missing, empty, not audio, non-finite samples."""


class TinyASRWarning(UserWarning):
    """Input tinyasr can use but the user should know about (a WAV file cut short); the CLI prints one line."""
