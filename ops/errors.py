"""servingctl's exception tree. Each error carries its process exit code and a message for a person.

    OpsError                 (1) base: the command failed; the message says why and what to do next
    ├── UsageError           (2) arguments the parser could not check (an archive path, min > max, ...)
    ├── TorchServeDown       (3) nothing answers on TorchServe's address (refused, or no answer in time)
    ├── NotFound             (4) unknown model or version (TorchServe's 404); the message lists the known ones
    ├── KeyRejected          (5) TorchServe refused the key (400 InvalidKeyException) even after re-reading it
    ├── HistoryUnavailable   (6) PostgreSQL (the change history) is unreachable; nothing was changed
    ├── Refused              (7) not allowed as asked (retire the default, roll back with no history, ...)
    └── GoldenCheckFailed    (8) a new version answered its golden inputs wrongly; it was unregistered again
"""

from __future__ import annotations


class OpsError(Exception):
    """Base of every error servingctl reports; ``exit_code`` is the process's exit status."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(OpsError):
    exit_code = 2


class TorchServeDown(OpsError):
    exit_code = 3


class NotFound(OpsError):
    exit_code = 4


class KeyRejected(OpsError):
    exit_code = 5


class HistoryUnavailable(OpsError):
    exit_code = 6


class Refused(OpsError):
    exit_code = 7


class GoldenCheckFailed(OpsError):
    exit_code = 8


EXIT_CODES = {cls.exit_code: cls for cls in (
    OpsError, UsageError, TorchServeDown, NotFound, KeyRejected, HistoryUnavailable, Refused, GoldenCheckFailed,
)}
