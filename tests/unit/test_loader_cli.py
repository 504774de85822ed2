"""model_loader's command line, termination message, MODEL_SHA256 pin and progress lines."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from model_loader.__main__ import run, write_termination_message
from model_loader.progress import Progress
from tests.conftest import MODEL_V1

V1 = MODEL_V1.as_uri() + "/"
MODEL_SHA = hashlib.sha256((MODEL_V1 / "model.onnx").read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("MODEL_URI", "MODEL_DIR", "MODEL_SHA256", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("LOADER_TERMINATION_LOG", str(termination))
    return termination


def test_help_shows_flags_examples_and_every_documented_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--source", "--dest", "--sha256", "--timeout", "--dry-run"):
        assert flag in out
    assert "examples:" in out
    runbook = (MODEL_V1.parents[2] / "docs" / "operations.md").read_text()
    table = runbook.split("## Loader exit codes", 1)[1].split("\n## ", 1)[0]
    for code in re.findall(r"^\| (\d+)(?: / (\d+))? \|", table, flags=re.MULTILINE):
        for c in filter(None, code):
            assert re.search(rf"^  {c}\b|; {c} by", out, flags=re.MULTILINE), c


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_URI", "file:///nonexistent/m/v1/")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "elsewhere"))
    assert run(["--source", V1, "--dest", str(tmp_path / "models")]) == 0
    assert (tmp_path / "models" / "current" / "model.onnx").is_file()
    assert not (tmp_path / "elsewhere").exists()


def test_bad_flag_value_is_a_configuration_error(tmp_path: Path, clean_env: Path) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path), "--timeout", "soon"]) == 2
    assert clean_env.read_text().startswith("exit 2: bad configuration: LOADER_TIMEOUT_SECONDS")


def test_dry_run_lists_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path / "models"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "would download" in err and "model.onnx" in err
    assert not (tmp_path / "models").exists()
    assert not clean_env.exists()


def test_failure_reason_goes_to_the_termination_log(tmp_path: Path, clean_env: Path) -> None:
    assert run(["--source", "file:///nonexistent/m/v1/", "--dest", str(tmp_path)]) == 4
    assert clean_env.read_text() == (
        "exit 4: not found: file:///nonexistent/m/v1/: no such file or directory"
    )


def test_success_is_in_the_termination_log_too(tmp_path: Path, clean_env: Path) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path / "m")]) == 0
    assert clean_env.read_text() == "exit 0: published"


def test_termination_log_is_skipped_without_a_writable_directory(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "termination-log"
    write_termination_message(str(target), "exit 4: not found")
    assert not target.parent.exists()
    write_termination_message(str(tmp_path / "log"), "x" * 10_000)
    assert len((tmp_path / "log").read_text()) == 4096


def test_sha256_pin_matching_publishes(tmp_path: Path) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path), "--sha256", MODEL_SHA.upper()]) == 0


def test_sha256_pin_mismatch_exits_6_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "models"
    assert run(["--source", V1, "--dest", str(dest), "--sha256", "0" * 64]) == 6
    assert "MODEL_SHA256 pins" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["versions"]
    assert not any((dest / "versions").iterdir())


def test_sha256_pin_is_checked_against_an_up_to_date_version(tmp_path: Path) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path)]) == 0
    # Same source, but the pin says other bytes: downloading again must fail, not skip.
    assert run(["--source", V1, "--dest", str(tmp_path), "--sha256", "1" * 64]) == 6
    assert run(["--source", V1, "--dest", str(tmp_path), "--sha256", MODEL_SHA]) == 0


def test_sha256_pin_must_be_hex(tmp_path: Path) -> None:
    assert run(["--source", V1, "--dest", str(tmp_path), "--sha256", "abc"]) == 2


def test_progress_line_has_bytes_percent_rate_and_eta() -> None:
    now = [100.0]
    progress = Progress(total=200 * (1 << 20), clock=lambda: now[0])
    progress.add(50 * (1 << 20))
    now[0] = 102.0
    assert progress.line() == "50.0/200.0 MiB (25%), 26.2 MB/s, ETA 6 s"
    progress.add(150 * (1 << 20))
    assert progress.line().endswith("(100%), 104.9 MB/s, ETA 0 s")
