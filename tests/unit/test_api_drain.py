"""model_api.drain: what SIGTERM starts, in process."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from model_api.drain import Drain
from model_api.logging import configure_logging, request_id


def test_the_drain_line_carries_no_request_id_of_the_interrupted_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The signal lands while some request's id is set; the drain's own line must not
    claim to belong to that request."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "text")
    forwarded: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: forwarded.append(sig))
    try:

        async def main() -> None:
            drain = Drain(0.05)
            undo = drain.chain_sigterm(asyncio.get_running_loop())
            token = request_id.set("req-in-flight")
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                request_id.reset(token)
            # The drain starts, then forwards the signal after its 0.05 s (waited for: a
            # busy machine may run this loop late).
            for _ in range(600):
                if forwarded:
                    break
                await asyncio.sleep(0.05)
            undo()
            assert drain.draining

        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
        root.handlers[:], root.level = handlers, level
    assert forwarded == [signal.SIGTERM]
    line = next(x for x in capsys.readouterr().out.splitlines() if "draining" in x)
    assert "[-]" in line and "req-in-flight" not in line
