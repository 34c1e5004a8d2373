"""User-facing errors: each carries one readable message and the exit code the CLI returns."""

from __future__ import annotations


class WeaveError(Exception):
    """A problem the user can fix (config, data, missing package); printed without traceback."""

    exit_code: int = 1


class ConfigError(WeaveError):
    """The config (or a CLI override) is invalid; every problem is listed in the message."""

    exit_code = 2


class CapabilityError(ConfigError):
    """The config asks for what the model family (or the machine) cannot do, with the reason."""

    exit_code = 4


class DataError(WeaveError):
    """A dataset file or row is unusable; the message names the entry, file and line or row."""

    exit_code = 1


class PluginError(WeaveError):
    """A plugin could not be imported, registered or validated; the message names the plugin."""

    exit_code = 3


class MissingDependencyError(WeaveError):
    """An optional package a feature needs is absent; the message says what to install."""

    exit_code = 4


class TrainingFault(WeaveError):
    """Training went wrong (a NaN loss, the loss watchdog); the last checkpoint is kept."""

    exit_code = 1


class Interrupted(WeaveError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def require(module: str, *, feature: str, install: str) -> object:
    """Import an optional module, or raise `MissingDependencyError` saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the package '{module}', which is not installed: pip install {install}"
        ) from exc
