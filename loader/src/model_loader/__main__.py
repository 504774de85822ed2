"""Entry point: settings -> logging -> load -> exit code.

Exit codes (also in README.md):
  0 published, or already up to date     5 permission denied / no credentials
  1 unexpected error (a bug)             6 integrity failure
  2 bad configuration                    7 LOADER_TIMEOUT_SECONDS passed
  3 storage unreachable                  8 MODEL_DIR not writable or too small
  4 not found                            130/143 interrupted by SIGINT/SIGTERM
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from pydantic import ValidationError

from model_loader.config import LoaderSettings
from model_loader.errors import ConfigError, Interrupted, LoaderError, LoaderTimeoutError
from model_loader.logging import configure_logging
from model_loader.publish import load
from model_loader.sources import open_source

log = logging.getLogger("model_loader")


def _settings_error(exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )
    return ConfigError(problems)


def _install_signal_handlers(timeout_seconds: float) -> None:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise LoaderTimeoutError(
            f"gave up after LOADER_TIMEOUT_SECONDS={timeout_seconds:g}; nothing was published"
        )

    def on_stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.setitimer(signal.ITIMER_REAL, timeout_seconds)


def run() -> int:
    try:
        settings = LoaderSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as exc:
        configure_logging("INFO", "text")
        error = _settings_error(exc)
        log.error("%s: %s", error.kind, error.message)
        return error.exit_code

    configure_logging(settings.log_level, settings.log_format)
    try:
        _install_signal_handlers(settings.timeout_seconds)
        result = load(settings, open_source(settings))
    except LoaderError as exc:
        log.error("%s: %s", exc.kind, exc.message, extra={"exit_code": exc.exit_code})
        return exc.exit_code
    except Exception:
        log.exception("unexpected error (a bug in model-loader; please report it)")
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    log.info("%s: %s", result.status, result.path)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
