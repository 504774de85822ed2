"""Entry point: arguments + settings -> logging -> load -> exit code (and its reason).

Every flag mirrors an environment variable; a flag given wins over the variable.

Start-up is a measurable part of a run (a 1 GiB model loads in about a second): the
settings, publishing and storage libraries are imported by `run()`, after the
arguments are parsed, and `main()` keeps the cyclic garbage collector off until they
are imported (see `main`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import model_loader
from model_loader.errors import ConfigError, Interrupted, LoaderError, LoaderTimeoutError

if TYPE_CHECKING:
    from pydantic import ValidationError

log = logging.getLogger("model_loader")

# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096

EPILOG = """\
examples:
  python -m model_loader --source gs://ml-models/iris_svc/v1/ --dest /models
  python -m model_loader --source file:///mnt/models/iris_svc/v2/ --dest /tmp/models \\
      --sha256 3f1c...e9 --timeout 300
  MODEL_URI=gs://ml-models/iris_svc/v1/ python -m model_loader --dry-run

exit codes (the reason is one line on stderr, and in LOADER_TERMINATION_LOG):
  0    published, or already up to date
  1    unexpected error (a bug: the line is followed by a traceback)
  2    bad configuration or usage: MODEL_URI malformed or unsupported, invalid settings
  3    storage unreachable within LOADER_WAIT_SECONDS, or retries exhausted
  4    not found: bucket, prefix, object, a required file or a model's external data
  5    permission denied, or no credentials (the line says how to provide them)
  6    integrity failure: checksum, size or MODEL_SHA256 mismatch, unsafe object name,
       signature missing or not valid for MODEL_VERIFY_KEY
  7    LOADER_TIMEOUT_SECONDS passed
  8    MODEL_DIR not writable, too small or full
  130  interrupted by SIGINT; 143 by SIGTERM; nothing published

Every setting is also an environment variable (docs/configuration.md).
"""

# flag -> environment variable it mirrors
_FLAGS = {
    "source": "MODEL_URI",
    "dest": "MODEL_DIR",
    "sha256": "MODEL_SHA256",
    "timeout": "LOADER_TIMEOUT_SECONDS",
    "concurrency": "LOADER_CONCURRENCY",
    "verify_key": "MODEL_VERIFY_KEY",
    "log_format": "LOG_FORMAT",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_loader",
        description="Copy a model version from object storage into MODEL_DIR, verified, "
        "and publish it atomically (MODEL_DIR/current).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", metavar="URI", help="MODEL_URI: gs://, file:// or https://")
    parser.add_argument("--dest", metavar="DIR", help="MODEL_DIR: where to publish")
    parser.add_argument("--sha256", metavar="HEX", help="MODEL_SHA256: pin model.onnx's sha256")
    parser.add_argument("--timeout", metavar="SECONDS", help="LOADER_TIMEOUT_SECONDS")
    parser.add_argument("--concurrency", metavar="N", help="LOADER_CONCURRENCY")
    parser.add_argument(
        "--verify-key", metavar="PEM", help="MODEL_VERIFY_KEY: require model.sig by this key"
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="LOG_FORMAT")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be downloaded, check it, write nothing",
    )
    parser.add_argument("--version", action=_Version)
    return parser


class _Version(argparse.Action):
    """--version, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"model-loader {model_loader.__version__}")
        parser.exit()


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


def write_termination_message(path: str, message: str) -> None:
    """Leave the reason where Kubernetes reads it (terminationMessagePath), if we can.

    The kubelet mounts that file (writable) into a /dev the container user cannot write
    to: an existing writable file counts, as does a writable directory to create it in.
    Elsewhere (a laptop, Compose) there is neither, and nothing is written.
    """
    target = Path(path)
    if target.exists():
        if not os.access(target, os.W_OK):
            return
    elif not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore"))
    except OSError as exc:
        log.debug("cannot write the termination message to %s: %s", path, exc)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from model_loader.config import LoaderSettings
    from model_loader.logging import configure_logging
    from model_loader.publish import load
    from model_loader.sources import open_source

    overrides = {
        env: getattr(args, flag) for flag, env in _FLAGS.items() if getattr(args, flag) is not None
    }
    termination_log = os.environ.get("LOADER_TERMINATION_LOG", "/dev/termination-log")
    try:
        settings = LoaderSettings(**overrides)
    except ValidationError as exc:
        configure_logging("INFO", "text")
        error = _settings_error(exc)
        log.error("%s: %s", error.kind, error.message, extra={"exit_code": error.exit_code})
        write_termination_message(
            termination_log, f"exit {error.exit_code}: {error.kind}: {error.message}"
        )
        return error.exit_code

    configure_logging(settings.log_level, settings.log_format)
    try:
        _install_signal_handlers(settings.timeout_seconds)
        source = open_source(settings)
        if not gc.isenabled():  # main() turned it off for the imports, all done now
            gc.freeze()  # they live as long as the process: keep them out of later passes
            gc.enable()
        try:
            result = load(settings, source, dry_run=args.dry_run)
        finally:
            source.close()
    except LoaderError as exc:
        log.error("%s: %s", exc.kind, exc.message, extra={"exit_code": exc.exit_code})
        write_termination_message(
            settings.termination_log, f"exit {exc.exit_code}: {exc.kind}: {exc.message}"
        )
        return exc.exit_code
    except Exception as exc:
        log.exception("unexpected error (a bug in model-loader; please report it)")
        write_termination_message(settings.termination_log, f"exit 1: unexpected error: {exc!r}")
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    log.info("%s: %s", result.status, result.path)
    if not args.dry_run:
        write_termination_message(settings.termination_log, f"exit 0: {result.status}")
    return 0


def main() -> None:
    # The imports of a run (google-cloud-storage, pydantic) leave ~90,000 tracked objects,
    # all alive until the exit: the collector's passes over that growing heap while they
    # are made are pure cost, ~0.1 s of CPU, a quarter of the start-up (gs://, measured
    # on 2 cores). run() turns it back on once they are done.
    gc.disable()
    sys.exit(run())


if __name__ == "__main__":
    main()
