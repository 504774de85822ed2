"""model_loader.publish: atomic publish, manifest, up-to-date skip, refusals."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest

from model_loader.config import LoaderSettings
from model_loader.errors import DestinationError, IntegrityError, ObjectNotFoundError
from model_loader.publish import (
    CURRENT,
    PREVIOUS,
    STAGING_PREFIX,
    VERSIONS,
    load,
    read_manifest,
)
from model_loader.sources.base import RemoteObject
from model_loader.sources.file import FileSource
from tests.conftest import MODEL_V1


def settings(
    model_dir: Path, uri: str = "file:///unused/iris_svc/v1/", **extra: object
) -> LoaderSettings:
    # The fakes below carry just model.onnx unless a test is about required files.
    extra.setdefault("LOADER_REQUIRE_FILES", "model.onnx")
    return LoaderSettings(MODEL_URI=uri, MODEL_DIR=str(model_dir), **extra)  # type: ignore[call-arg]


class FakeSource:
    """An in-memory Source: objects as bytes, with knobs to misbehave."""

    def __init__(
        self,
        uri: str,
        files: dict[str, bytes],
        fail_on: str | None = None,
        listed_sizes: dict[str, int] | None = None,
    ) -> None:
        self.uri = uri
        self.files = files
        self.fail_on = fail_on
        self.listed_sizes = listed_sizes or {}
        self.downloads: list[str] = []
        self.closed = 0

    def list_objects(self) -> list[RemoteObject]:
        return [
            RemoteObject(
                name=n, uri=f"{self.uri}{n}", size=self.listed_sizes.get(n, len(b)), generation="1"
            )
            for n, b in sorted(self.files.items())
        ]

    def download(self, obj: RemoteObject, dest: Path, progress: object = None) -> Future[None]:
        self.downloads.append(obj.name)
        future: Future[None] = Future()
        if obj.name == self.fail_on:
            dest.write_bytes(b"partial")
            future.set_exception(ConnectionResetError("storage went away"))
        else:
            dest.write_bytes(self.files[obj.name])
            future.set_result(None)
        return future

    def close(self) -> None:
        self.closed += 1


def published(model_dir: Path) -> dict[str, bytes]:
    current = model_dir / CURRENT
    return {p.name: p.read_bytes() for p in sorted(current.iterdir())} if current.exists() else {}


def test_publishes_a_directory_with_a_manifest(tmp_path: Path) -> None:
    uri = MODEL_V1.as_uri() + "/"
    result = load(settings(tmp_path, uri), FileSource(uri))

    assert result.status == "published"
    current = tmp_path / CURRENT
    assert current.is_symlink() and current.resolve().parent == tmp_path / VERSIONS
    assert {p.name for p in current.iterdir()} == {
        "model.onnx",
        "label.json",
        "sample.json",
        "manifest.json",
    }
    assert (current / "model.onnx").read_bytes() == (MODEL_V1 / "model.onnx").read_bytes()

    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["model_name"] == "iris_svc" and manifest["model_version"] == "v1"
    assert manifest["source_uri"] == uri
    entry = next(o for o in manifest["objects"] if o["name"] == "model.onnx")
    assert entry["size"] == (MODEL_V1 / "model.onnx").stat().st_size
    import hashlib

    assert entry["sha256"] == hashlib.sha256((MODEL_V1 / "model.onnx").read_bytes()).hexdigest()
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))
    assert oct((current / "model.onnx").stat().st_mode & 0o777) == "0o644"


def test_second_run_with_an_unchanged_source_downloads_nothing(tmp_path: Path) -> None:
    files = {"model.onnx": b"onnx", "label.json": b"{}"}
    first = FakeSource("gs://b/m/v1/", files)
    load(settings(tmp_path, first.uri), first)
    again = FakeSource("gs://b/m/v1/", files)
    result = load(settings(tmp_path, again.uri), again)
    assert result.status == "up-to-date"
    assert again.downloads == []


def test_a_new_version_replaces_the_old_which_stays_as_previous(tmp_path: Path) -> None:
    """Replicas started before the publish still serve the old version (a rollout), and a
    rollback reads where to go back to from `previous`; anything older is pruned."""
    v1 = FakeSource("gs://b/m/v1/", {"model.onnx": b"one"})
    v2 = FakeSource("gs://b/m/v2/", {"model.onnx": b"two"})
    v3 = FakeSource("gs://b/m/v3/", {"model.onnx": b"three"})
    load(settings(tmp_path, v1.uri), v1)
    assert not (tmp_path / PREVIOUS).exists()
    v1_dir = (tmp_path / CURRENT).resolve()

    load(settings(tmp_path, v2.uri), v2)
    assert published(tmp_path)["model.onnx"] == b"two"
    assert (tmp_path / PREVIOUS).resolve() == v1_dir
    assert (v1_dir / "model.onnx").read_bytes() == b"one"
    assert read_manifest(tmp_path / PREVIOUS)["source_uri"] == v1.uri  # type: ignore[index]
    assert len(list((tmp_path / VERSIONS).iterdir())) == 2

    v2_dir = (tmp_path / CURRENT).resolve()
    load(settings(tmp_path, v3.uri), v3)
    assert published(tmp_path)["model.onnx"] == b"three"
    assert (tmp_path / PREVIOUS).resolve() == v2_dir
    assert sorted((tmp_path / VERSIONS).iterdir()) == sorted(
        [v2_dir, (tmp_path / CURRENT).resolve()]
    )
    assert not os.readlink(tmp_path / PREVIOUS).startswith("/")  # relative, as `current`


def test_an_unchanged_source_leaves_current_and_previous_alone(tmp_path: Path) -> None:
    v1 = FakeSource("gs://b/m/v1/", {"model.onnx": b"one"})
    v2 = FakeSource("gs://b/m/v2/", {"model.onnx": b"two"})
    load(settings(tmp_path, v1.uri), v1)
    load(settings(tmp_path, v2.uri), v2)
    links = {n: os.readlink(tmp_path / n) for n in (CURRENT, PREVIOUS)}
    assert load(settings(tmp_path, v2.uri), v2).status == "up-to-date"
    assert {n: os.readlink(tmp_path / n) for n in (CURRENT, PREVIOUS)} == links


def test_failure_mid_download_keeps_the_previous_version_and_leaves_no_litter(
    tmp_path: Path,
) -> None:
    v1 = FakeSource("gs://b/m/v1/", {"model.onnx": b"one", "label.json": b"{}"})
    load(settings(tmp_path, v1.uri), v1)
    before = published(tmp_path)

    broken = FakeSource(
        "gs://b/m/v2/", {"label.json": b"[]", "model.onnx": b"two"}, fail_on="model.onnx"
    )
    with pytest.raises(ConnectionResetError):
        load(settings(tmp_path, broken.uri), broken)
    assert broken.closed  # no download may go on writing into the removed staging area

    assert published(tmp_path) == before
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))
    assert len(list((tmp_path / VERSIONS).iterdir())) == 1


def test_size_mismatch_is_an_integrity_error_and_publishes_nothing(tmp_path: Path) -> None:
    source = FakeSource("gs://b/m/v1/", {"model.onnx": b"short"}, listed_sizes={"model.onnx": 99})
    with pytest.raises(IntegrityError, match="got 5 bytes, storage lists 99"):
        load(settings(tmp_path, source.uri), source)
    assert published(tmp_path) == {}


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/passwd", "a/../../b", "manifest.json"])
def test_unsafe_or_reserved_object_names_are_refused(tmp_path: Path, name: str) -> None:
    source = FakeSource("gs://b/m/v1/", {"model.onnx": b"x", name: b"evil"})
    with pytest.raises(IntegrityError):
        load(settings(tmp_path / "models", source.uri), source)
    assert source.downloads == []
    assert not (tmp_path / "escape.onnx").exists()


def test_missing_required_file_is_not_found(tmp_path: Path) -> None:
    source = FakeSource("gs://b/m/v1/", {"label.json": b"{}"})
    defaults = LoaderSettings(MODEL_URI=source.uri, MODEL_DIR=str(tmp_path))  # type: ignore[call-arg]
    assert defaults.require_files == ("model.onnx",)  # a model needs nothing else
    with pytest.raises(ObjectNotFoundError, match=r"missing model\.onnx \(found: label\.json\)"):
        load(defaults, source)
    assert source.downloads == []
    assert not (tmp_path / "current").exists()


def test_not_enough_space_fails_before_downloading(tmp_path: Path) -> None:
    source = FakeSource("gs://b/m/v1/", {"model.onnx": b"x"}, listed_sizes={"model.onnx": 1 << 60})
    with pytest.raises(DestinationError, match="bytes free; the model needs"):
        load(settings(tmp_path, source.uri), source)
    assert source.downloads == []


def test_unwritable_model_dir_is_a_destination_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    source = FakeSource("gs://b/m/v1/", {"model.onnx": b"x"})
    with pytest.raises(DestinationError, match="not writable"):
        load(settings(blocker / "models", source.uri), source)


def test_staging_left_by_a_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / f"{STAGING_PREFIX}killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    source = FakeSource("gs://b/m/v1/", {"model.onnx": b"x"})
    load(settings(tmp_path, source.uri), source)
    assert not stale.exists()


def test_name_and_version_come_from_the_uri_unless_set(tmp_path: Path) -> None:
    source = FakeSource("gs://bucket/fraud/2024-06/", {"model.onnx": b"x"})
    assert load(settings(tmp_path / "a", source.uri), source).manifest["model_name"] == "fraud"
    named = load(settings(tmp_path / "b", source.uri, MODEL_NAME="m", MODEL_VERSION="7"), source)
    assert (named.manifest["model_name"], named.manifest["model_version"]) == ("m", "7")


@pytest.mark.parametrize(
    ("path", "identity"),
    [
        ("iris_svc.onnx", ("iris_svc", "1")),  # the seed's one file, at the bucket's top
        ("pattern/iris_svc.onnx", ("iris_svc", "1")),
        ("my models/iris svc.onnx", ("iris svc", "1")),  # quoted in the URI
        ("fraud/v3/model.onnx", ("fraud", "v3")),  # model.onnx: its folders name it
    ],
)
def test_a_uri_naming_one_onnx_file_publishes_it_as_model_onnx(
    tmp_path: Path, path: str, identity: tuple[str, str]
) -> None:
    (tmp_path / "bucket" / path).parent.mkdir(parents=True)
    (tmp_path / "bucket" / path).write_bytes(b"onnx bytes")
    uri = (tmp_path / "bucket" / path).as_uri()
    result = load(settings(tmp_path / "m", uri), FileSource(uri))
    files = published(tmp_path / "m")
    assert sorted(files) == ["manifest.json", "model.onnx"] and files["model.onnx"] == b"onnx bytes"
    assert (result.manifest["model_name"], result.manifest["model_version"]) == identity
    assert [(o["name"], o["uri"]) for o in result.manifest["objects"]] == [("model.onnx", uri)]
    assert load(settings(tmp_path / "m", uri), FileSource(uri)).status == "up-to-date"


def test_a_lone_file_of_another_kind_keeps_its_name(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w")
    uri = (tmp_path / "weights.bin").as_uri()
    with pytest.raises(ObjectNotFoundError, match=r"missing model.onnx \(found: weights.bin\)"):
        load(settings(tmp_path / "m", uri), FileSource(uri))


def test_read_manifest_tolerates_garbage(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) is None
    assert read_manifest(tmp_path / "absent") is None


def test_fingerprint_changes_with_generation() -> None:
    obj = RemoteObject(name="model.onnx", uri="gs://b/model.onnx", size=1, generation="1")
    assert obj.fingerprint() != replace(obj, generation="2").fingerprint()
