"""model_loader.sources: URI parsing per scheme and the archive member checks (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_loader.config import LoaderSettings
from model_loader.errors import ConfigError, IntegrityError
from model_loader.sources import SOURCES, open_source
from model_loader.sources.gcs import split_gs_uri
from model_loader.sources.http import HttpSource, _check_member_name


def settings(uri: str, tmp_path: Path) -> LoaderSettings:
    return LoaderSettings(MODEL_URI=uri, MODEL_DIR=str(tmp_path))  # type: ignore[call-arg]


def test_every_scheme_has_one_module() -> None:
    assert sorted(SOURCES) == ["file", "gs", "http", "https"]


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("gs://ml-models/iris_svc/v1/", "ml-models", "iris_svc/v1/"),
        ("gs://ml-models/iris_svc/v1/model.onnx", "ml-models", "iris_svc/v1/model.onnx"),
        ("gs://ml-models", "ml-models", ""),
    ],
)
def test_gs_uri(uri: str, bucket: str, prefix: str) -> None:
    assert split_gs_uri(uri) == (bucket, prefix)


@pytest.mark.parametrize(
    ("uri", "name", "archive"),
    [
        ("https://example.com/models/iris/v1/model.onnx", "model.onnx", False),
        ("https://example.com/models/iris-v1.tar.gz", "iris-v1.tar.gz", True),
        ("https://example.com/models/iris-v1.TGZ", "iris-v1.TGZ", True),
        ("http://mirror.local:8080/iris%20v1.zip", "iris v1.zip", True),
    ],
)
def test_https_uri(tmp_path: Path, uri: str, name: str, archive: bool) -> None:
    source = open_source(settings(uri, tmp_path))
    assert isinstance(source, HttpSource)
    assert (source.name, source.archive) == (name, archive)


@pytest.mark.parametrize("uri", ["https://example.com/", "https:///model.onnx"])
def test_https_uri_without_a_file_is_a_config_error(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ConfigError, match="expected https://host/path/file"):
        open_source(settings(uri, tmp_path))


@pytest.mark.parametrize("name", ["model.onnx", "sub/dir/weights.bin", "./label.json"])
def test_safe_archive_members_pass(name: str) -> None:
    _check_member_name("https://h/a.tar.gz", name)


@pytest.mark.parametrize(
    "name", ["../up.txt", "a/../../up.txt", "/etc/passwd", "a\\..\\b", "nul\x00byte"]
)
def test_escaping_archive_members_are_refused(name: str) -> None:
    with pytest.raises(IntegrityError, match="unsafe archive member refused"):
        _check_member_name("https://h/a.tar.gz", name)
