"""model_loader.__main__: settings errors and loader errors become one line and an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_loader.__main__ import run
from model_loader.config import LoaderSettings
from model_loader.errors import (
    ConfigError,
    DestinationError,
    IntegrityError,
    Interrupted,
    LoaderError,
    LoaderTimeoutError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SourceUnavailableError,
)
from tests.conftest import MODEL_V1


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MODEL_URI", "MODEL_DIR", "STORAGE_EMULATOR_HOST", "LOADER_REQUIRE_FILES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOADER_TERMINATION_LOG", str(tmp_path / "termination-log"))


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = {
        cls: cls("x").exit_code
        for cls in (
            LoaderError,
            ConfigError,
            SourceUnavailableError,
            ObjectNotFoundError,
            PermissionDeniedError,
            IntegrityError,
            LoaderTimeoutError,
            DestinationError,
        )
    }
    assert sorted(codes.values()) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert Interrupted(15).exit_code == 143
    runbook = (MODEL_V1.parents[2] / "docs" / "operations.md").read_text()
    for code in range(1, 9):
        assert f"| {code} |" in runbook, f"exit code {code} is not in docs/operations.md's table"


def test_success_returns_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_URI", MODEL_V1.as_uri() + "/")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert run([]) == 0
    assert (tmp_path / "current" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({}, 2, "MODEL_URI: Field required"),
        ({"MODEL_URI": "not a uri"}, 2, "is not a URI"),
        ({"MODEL_URI": "s3://bucket/m/"}, 2, "unsupported scheme 's3'"),
        ({"MODEL_URI": "gs:///m/v1/"}, 2, "no bucket name"),
        ({"MODEL_URI": "file:///nonexistent/m/v1/"}, 4, "no such file or directory"),
        ({"LOADER_TIMEOUT_SECONDS": "-1", "MODEL_URI": "file:///x/"}, 2, "greater than 0"),
    ],
)
def test_failures_print_one_line_and_exit_with_their_code(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run([]) == code
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "current").exists()


def test_require_files_accepts_a_comma_list() -> None:
    settings = LoaderSettings(
        MODEL_URI="gs://b/p/", LOADER_REQUIRE_FILES=" model.onnx, label.json ,"
    )  # type: ignore[call-arg]
    assert settings.require_files == ("model.onnx", "label.json")
