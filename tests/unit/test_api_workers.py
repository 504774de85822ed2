"""Readiness across worker processes (model_api.workers): ready only while every worker
of the container has marked itself ready and is still alive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_api.workers import READY_DIR_ENV, Peers, make_ready_dir


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_one_worker_is_ready_on_its_own() -> None:
    peers = Peers.from_env(1)
    assert peers.directory is None and peers.all_ready()
    peers.mark_ready()  # nothing to write
    peers.unmark()


def test_ready_only_once_every_worker_marked_itself(tmp_path: Path) -> None:
    me = Peers(str(tmp_path), workers=2)
    assert not me.all_ready()
    me.mark_ready()
    assert not me.all_ready(), "the other worker is still warming up"
    (tmp_path / str(os.getppid())).touch()  # a second live process marks itself
    assert me.all_ready()
    me.unmark()
    assert not me.all_ready()
    me.unmark()  # twice: no error


def test_a_dead_workers_marker_does_not_count(tmp_path: Path) -> None:
    me = Peers(str(tmp_path), workers=2)
    me.mark_ready()
    (tmp_path / str(dead_pid())).touch()  # died after it had marked itself ready
    (tmp_path / "not-a-pid").touch()
    assert not me.all_ready()
    (tmp_path / str(os.getppid())).touch()  # its replacement warmed up
    assert me.all_ready()


def test_a_missing_directory_is_not_ready(tmp_path: Path) -> None:
    assert not Peers(str(tmp_path / "gone"), workers=2).all_ready()


def test_the_starting_process_hands_the_directory_to_its_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(READY_DIR_ENV, raising=False)
    directory = make_ready_dir()
    try:
        assert os.environ[READY_DIR_ENV] == directory and not os.listdir(directory)
        assert Peers.from_env(3).directory == Path(directory)
        assert Peers.from_env(1).directory is None
    finally:
        os.rmdir(directory)
