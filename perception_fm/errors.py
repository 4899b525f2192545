"""Errors with a message a robot operator can act on. Nodes catch these, log them and keep running."""


class PerceptionFmError(Exception):
    """Base class of this package's errors."""


class PluginNotFoundError(PerceptionFmError, LookupError):
    """No installed plugin provides the requested model for the requested task."""

    def __init__(self, task: str, name: str, available: list[str]):
        self.task, self.name, self.available = task, name, list(available)
        listed = ", ".join(sorted(self.available)) or "none"
        super().__init__(f"no {task} model named {name!r}; installed {task} models: {listed}")


class PluginUnavailableError(PerceptionFmError):
    """The plugin exists but a dependency it needs is not installed."""


class WeightsNotFoundError(PerceptionFmError, FileNotFoundError):
    """Model weights could not be found locally or on the hub (never replaced by random weights)."""


class WeightsMismatchError(PerceptionFmError, ValueError):
    """A checkpoint does not fit the architecture (missing or unexpected keys)."""


class WeightsCorruptError(PerceptionFmError, ValueError):
    """A weight or config file exists but cannot be used: unreadable, not the format it claims, tensors of the
    wrong shape, or non-finite values. The message is one line naming the file and the problem."""


class BadInputError(PerceptionFmError, ValueError):
    """An input message that cannot be processed. `reason` is a short counter key, e.g. 'encoding'."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
