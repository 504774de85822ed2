"""Load for the drain test; stdlib only, run inside a container on the compose network.

THREADS threads each send POST /predict (256 rows) on a new connection, back to back.
Every request is classified:
  ok        200 and a complete JSON body with 256 predictions;
  refused   the connection could not be made (nothing was sent: the client knows it may
            retry anywhere);
  in_flight connected and the whole request sent, but no complete 200 response (reset,
            EOF, timeout, or another status): the failures a drain must prevent.
Prints "load started", then "load flowing" once --flowing requests were ok (the test
stops the replica then, not after a fixed time in which a busy machine may serve far
fewer). A "balancer" thread polls /ready every 0.2 s, like a readiness probe. Once it
fails, the clients go on for --propagation seconds (endpoint removal is not instant),
then stop, unless --ignore-ready: then they stop after --refused-for seconds of refused
connects (or --max-seconds after the load was flowing).
Prints one JSON line with the counts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time

ROW = [5.1, 3.5, 1.4, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="api")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--propagation", type=float, default=1.0)
    parser.add_argument("--ignore-ready", action="store_true")
    parser.add_argument("--refused-for", type=float, default=2.0)
    parser.add_argument("--flowing", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=60, help="from the load flowing")
    args = parser.parse_args()

    body = json.dumps({"data": [ROW] * args.rows}).encode()
    lock = threading.Lock()
    counts = {"ok": 0, "refused": 0, "in_flight": 0, "ok_after_not_ready": 0}
    errors: dict[str, int] = {}
    not_ready_at: list[float] = []
    failed_at: list[float] = []  # seconds since the start, of each in-flight failure
    refused_at: list[float] = []
    stop = threading.Event()
    flowing = threading.Event()
    started = time.monotonic()

    def count(key: str, error: str | None = None) -> None:
        with lock:
            counts[key] += 1
            if key == "ok" and not_ready_at:
                counts["ok_after_not_ready"] += 1
            if key == "ok" and counts["ok"] == args.flowing:
                print("load flowing", flush=True)
                flowing.set()
            elif key == "in_flight":
                failed_at.append(round(time.monotonic() - started, 2))
            elif key == "refused" and not refused_at:
                refused_at.append(round(time.monotonic() - started, 2))
            if error:
                errors[error] = errors.get(error, 0) + 1

    def client() -> None:
        last_ok = time.monotonic()
        while not stop.is_set():
            conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
            try:
                conn.connect()
            except OSError as exc:
                count("refused", f"connect: {type(exc).__name__}")
                conn.close()
                if args.ignore_ready and time.monotonic() - last_ok > args.refused_for:
                    return
                time.sleep(0.01)
                continue
            try:
                conn.request(
                    "POST", "/predict", body=body, headers={"Content-Type": "application/json"}
                )
            except OSError as exc:  # the request did not go out whole: not "sent"
                count("refused", f"send: {type(exc).__name__}")
                conn.close()
                continue
            try:
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    count("in_flight", f"status {response.status}")
                elif len(json.loads(payload)["prediction"]) != args.rows:
                    count("in_flight", "short body")
                else:
                    count("ok")
                    last_ok = time.monotonic()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                count("in_flight", f"response: {type(exc).__name__}")
            finally:
                conn.close()

    def balancer() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection(args.host, args.port, timeout=5)
            try:
                conn.request("GET", "/ready")
                ready = conn.getresponse().status == 200
            except TimeoutError:
                continue  # no answer yet on a busy machine: not an answer; ask again
            except (OSError, http.client.HTTPException):
                ready = False
            finally:
                conn.close()
            if not ready and not not_ready_at:
                not_ready_at.append(time.monotonic())
                if not args.ignore_ready:
                    time.sleep(args.propagation)
                    stop.set()
            time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    watcher = threading.Thread(target=balancer, daemon=True)
    watcher.start()
    print("load started", flush=True)
    flowing.wait(timeout=args.max_seconds)
    flowing_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=max(0.0, args.max_seconds - (time.monotonic() - flowing_at)))
    stop.set()
    summary = {
        **counts,
        "errors": errors,
        "not_ready_at": round(not_ready_at[0] - started, 2) if not_ready_at else None,
        "first_refused_at": refused_at[0] if refused_at else None,
        "in_flight_failed_at": failed_at,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
