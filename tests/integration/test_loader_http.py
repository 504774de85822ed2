"""https:// sources against a real HTTP server on loopback (plain http: same code path).

Python's http.server answers HEAD with Content-Length and Last-Modified and ignores
Range, so these runs also cover a server without range support.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import MODEL_V1
from tests.integration.conftest import run_loader

MODEL = (MODEL_V1 / "model.onnx").read_bytes()
LABELS = (MODEL_V1 / "label.json").read_bytes()


class Quiet(SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []  # "METHOD path" of every request, in order

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        Quiet.requests.append(f"{self.command} {self.path}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    Quiet.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def tar_gz(path: Path, members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)


def loader(url: str, model_dir: Path, **extra: str) -> dict[str, str]:
    return {"MODEL_URI": url, "MODEL_DIR": str(model_dir), "LOADER_WAIT_SECONDS": "3", **extra}


def test_single_file(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    (root / "model.onnx").write_bytes(MODEL)
    sha = hashlib.sha256(MODEL).hexdigest()
    env = loader(f"{url}/model.onnx", tmp_path / "m", LOADER_REQUIRE_FILES="model.onnx")
    result = run_loader({**env, "MODEL_SHA256": sha})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "current" / "model.onnx").read_bytes() == MODEL
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())
    assert manifest["objects"][0]["sha256"] == sha
    assert manifest["objects"][0]["generation"]  # Last-Modified
    again = run_loader(env)
    assert again.returncode == 0 and "up to date" in again.stderr


def test_a_lone_onnx_file_is_the_versions_model_onnx(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = served
    (root / "iris_svc.onnx").write_bytes(MODEL)
    result = run_loader(loader(f"{url}/iris_svc.onnx", tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "current" / "model.onnx").read_bytes() == MODEL
    manifest = json.loads((tmp_path / "m" / "current" / "manifest.json").read_text())
    assert (manifest["model_name"], manifest["model_version"]) == ("iris_svc", "1")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_is_unpacked(served: tuple[str, Path], tmp_path: Path, kind: str) -> None:
    url, root = served
    members = {"model.onnx": MODEL, "label.json": LABELS, "extra/notes.txt": b"hi"}
    if kind == "zip":
        with zipfile.ZipFile(root / "v1.zip", "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        tar_gz(root / "v1.tar.gz", members)
    result = run_loader(loader(f"{url}/v1.{kind}", tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    current = tmp_path / "m" / "current"
    for name, data in members.items():
        assert (current / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["current", "versions"]


def test_archive_is_listed_without_downloading_it(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    tar_gz(root / "v1.tar.gz", {"model.onnx": MODEL, "label.json": LABELS})
    dry = run_loader(loader(f"{url}/v1.tar.gz", tmp_path / "m"), args=("--dry-run",))
    assert dry.returncode == 0, dry.stderr
    assert "would download" in dry.stderr and "to unpack" in dry.stderr
    assert Quiet.requests == ["HEAD /v1.tar.gz"]
    assert not (tmp_path / "m" / "current").exists()

    assert run_loader(loader(f"{url}/v1.tar.gz", tmp_path / "m")).returncode == 0
    Quiet.requests.clear()
    again = run_loader(loader(f"{url}/v1.tar.gz", tmp_path / "m"))
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
    assert Quiet.requests == ["HEAD /v1.tar.gz"]  # unchanged: neither fetched nor unpacked


def test_archive_without_a_required_file_publishes_nothing(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = served
    tar_gz(root / "v1.tar.gz", {"label.json": LABELS})
    result = run_loader(loader(f"{url}/v1.tar.gz", tmp_path / "m"))
    assert result.returncode == 4, result.stderr
    assert "missing model.onnx (found: label.json)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["versions"]


@pytest.mark.parametrize(
    ("kind", "evil"),
    [
        ("tar.gz", {"../escaped.txt": b"x"}),
        ("tar.gz", {"/tmp/absolute.txt": b"x"}),
        ("tar.gz", "link"),
        ("zip", {"../escaped.txt": b"x"}),
    ],
)
def test_archive_escaping_the_destination_is_refused(
    served: tuple[str, Path], tmp_path: Path, kind: str, evil: dict[str, bytes] | str
) -> None:
    url, root = served
    members = {"model.onnx": MODEL, "label.json": LABELS}
    if kind == "zip":
        with zipfile.ZipFile(root / "bad.zip", "w") as zf:
            for name, data in {**members, **evil}.items():  # type: ignore[dict-item]
                zf.writestr(name, data)
    elif evil == "link":
        tar_gz(root / "bad.tar.gz", members, symlink=("passwd", "/etc/passwd"))
    else:
        tar_gz(root / "bad.tar.gz", {**members, **evil})  # type: ignore[dict-item]
    model_dir = tmp_path / "m"
    result = run_loader(loader(f"{url}/bad.{kind}", model_dir))
    assert result.returncode == 6, result.stderr
    assert "unsafe archive member refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (model_dir / "current").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in model_dir.iterdir()) == ["versions"]


def test_missing_file_is_not_found(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    result = run_loader(loader(f"{url}/nope.tar.gz", tmp_path / "m"))
    assert result.returncode == 4, result.stderr
    assert "HTTP 404" in result.stderr
