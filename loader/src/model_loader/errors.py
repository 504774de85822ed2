"""The loader's exceptions. Each carries the process exit code it maps to.

    LoaderError (1: unexpected)
    ├── ConfigError (2)             MODEL_URI malformed, unknown scheme, bad settings
    ├── SourceUnavailableError (3)  storage not reachable within LOADER_WAIT_SECONDS,
    │                               or a range's LOADER_RETRIES exhausted
    ├── ObjectNotFoundError (4)     bucket, prefix, object, a required file or a model's
    │                               external data file is missing
    ├── PermissionDeniedError (5)   401/403, or no credentials to ask with
    ├── IntegrityError (6)          checksum, size or MODEL_SHA256 mismatch, unsafe name
    ├── LoaderTimeoutError (7)      LOADER_TIMEOUT_SECONDS passed
    ├── DestinationError (8)        MODEL_DIR not writable, too small, or full
    └── Interrupted (130/143)       SIGINT / SIGTERM; nothing published

Only `__main__` catches them: it prints one line and exits with `exit_code`.
Library exceptions are translated where they enter the loader (`raise ... from exc`).
"""

from __future__ import annotations

import errno

# Write failures that are the volume's fault, not the source's (DestinationError).
# EFBIG: a file-size limit (RLIMIT_FSIZE, some quota systems).
DESTINATION_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


class LoaderError(Exception):
    exit_code = 1
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LoaderError):
    exit_code = 2
    kind = "bad configuration"


class SourceUnavailableError(LoaderError):
    exit_code = 3
    kind = "storage unreachable"


class ObjectNotFoundError(LoaderError):
    exit_code = 4
    kind = "not found"


class PermissionDeniedError(LoaderError):
    exit_code = 5
    kind = "permission denied"


class IntegrityError(LoaderError):
    exit_code = 6
    kind = "integrity failure"


class LoaderTimeoutError(LoaderError):
    exit_code = 7
    kind = "timeout"


class DestinationError(LoaderError):
    exit_code = 8
    kind = "destination"


class Interrupted(LoaderError):
    kind = "interrupted"

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}; nothing was published")
        self.exit_code = 128 + signum
