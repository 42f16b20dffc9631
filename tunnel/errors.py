"""Exception classes. Every error a user can cause derives from SitelinkError, which the CLI turns into
one clear line and an exit status instead of a traceback."""

from __future__ import annotations


class SitelinkError(Exception):
    """Root of all errors sitelink reports to a user."""

    exit_status = 1


class MalformedPacket(SitelinkError):
    """The one parse error of the packet cores; translated into a counted drop at one boundary."""


class ConfigError(SitelinkError):
    """A configuration or key file is invalid. Carries every problem found, each as
    `file:line:col: path: message`, so an admin fixes them all in one pass."""

    exit_status = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, too widely readable, or has bad contents."""


class DriverError(SitelinkError):
    """An OS resource (TUN device, socket, route) could not be set up."""


class ReloadRefused(SitelinkError):
    """A reload's new configuration changes settings only a restart can apply; nothing was changed."""

    exit_status = 2


class ReloadFailed(SitelinkError):
    """A reload went wrong after it began changing the gateway (a bug or an OS failure, not the config)."""
