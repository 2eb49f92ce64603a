"""External data in archives and versions (models/archive.py, models/registry.py): a graph may keep
its weights beside it only in the version's own checksummed files. Built for real: v1's graph saved
by onnx with its initializers in an external-data file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from driftloop.models.archive import MANIFEST
from driftloop.models.errors import IntegrityError
from driftloop.models.registry import MODEL_FILE, REFERENCE_FILE, Registry

from tests.unit.test_registry_cli import read_archive, write_archive


@pytest.fixture
def registry(champion_home: Path, tmp_path: Path) -> Registry:
    """A private copy of the session's registry (v1 champion)."""
    home = tmp_path / "home"
    shutil.copytree(champion_home / "bentoml", home)
    return Registry(home, "loans")


def external_graph(registry: Registry, location: str, tmp_path: Path) -> tuple[bytes, bytes]:
    """v1's graph with its probabilities offset by a weight (zeros, so it answers as v1 does) that
    onnx saves in an external-data file named ``location``: (the graph, that file's bytes)."""
    import onnx
    from onnx import helper, numpy_helper

    out = tmp_path / f"saved-{location}"
    out.mkdir()
    model = onnx.load_from_string((registry.get("v1").path / MODEL_FILE).read_bytes())
    g = model.graph
    producer = next(n for n in g.node if "probabilities" in n.output)
    producer.output[list(producer.output).index("probabilities")] = "probabilities_raw"
    g.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "offset"))  # raw bytes: external
    g.node.append(helper.make_node("Add", ["probabilities_raw", "offset"], ["probabilities"]))
    onnx.save_model(model, out / MODEL_FILE, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return (out / MODEL_FILE).read_bytes(), (out / location).read_bytes()


def archive_with(registry: Registry, tmp_path: Path, graph: bytes, side: dict[str, bytes],
                 unlisted: dict[str, bytes] | None = None) -> Path:
    """v1's archive with ``graph`` as its model and ``side`` files as members, each listed with its
    checksum in the manifest and the metadata (as `models export` writes them); ``unlisted``:
    members the manifest does not list."""
    good = read_archive(registry.export("v1", tmp_path / "v1.tar.gz", overwrite=True))
    manifest = json.loads(good[MANIFEST])
    files = {MODEL_FILE: graph, **side}
    for name, blob in files.items():
        digest = hashlib.sha256(blob).hexdigest()
        manifest["files"][name] = {"sha256": digest, "size": len(blob)}
        manifest["metadata"]["sha256"][name] = digest
    members = good | files | (unlisted or {}) | {MANIFEST: json.dumps(manifest).encode()}
    return write_archive(tmp_path / "crafted.tar.gz", members)


def test_an_archive_whose_graph_names_a_file_it_does_not_hold_is_refused(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: ``location: "passwd"``, no such member; onnxruntime given the graph as bytes
    would read ./passwd from the importer's working directory (here it exists and would load)."""
    graph, data = external_graph(registry, "passwd", tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "passwd").write_bytes(data)
    monkeypatch.chdir(cwd)
    archive = archive_with(registry, tmp_path, graph, {})
    with pytest.raises(IntegrityError, match=r"tensor 'offset': external data location 'passwd' is not one "
                                             r"of the version's own checksummed files"):
        registry.import_(archive, actor="mallory")
    assert [v.version for v in registry.versions()] == ["v1"]
    assert all(h["action"] != "import" for h in registry.history())


def test_an_external_data_member_the_manifest_does_not_list_is_refused(registry: Registry, tmp_path: Path) -> None:
    graph, data = external_graph(registry, "weights.bin", tmp_path)
    archive = archive_with(registry, tmp_path, graph, {}, unlisted={"weights.bin": data})
    with pytest.raises(IntegrityError, match="unexpected member 'weights.bin': the manifest lists no checksum"):
        registry.import_(archive, actor="mallory")
    assert [v.version for v in registry.versions()] == ["v1"]


def test_a_legitimate_external_data_archive_imports_serves_and_exports_again(registry: Registry,
                                                                             tmp_path: Path) -> None:
    graph, data = external_graph(registry, "weights.bin", tmp_path)
    mv = registry.import_(archive_with(registry, tmp_path, graph, {"weights.bin": data}), actor="carol")
    assert mv.version == "v2"
    assert set(mv.metadata["sha256"]) == {MODEL_FILE, REFERENCE_FILE, "weights.bin"}
    assert (mv.path / "weights.bin").read_bytes() == data

    rows = registry.reference("v1").head(25)
    (p1, q1), (p2, q2) = registry.load("v1").predict_frame(rows), registry.load("v2").predict_frame(rows)
    assert np.array_equal(p1, p2) and np.array_equal(q1, q2)
    registry.promote("v2", actor="carol", reason="same model, weights beside it")
    assert registry.champion().version == "v2"

    again = read_archive(registry.export("v2", tmp_path / "v2.zip"))
    assert again["weights.bin"] == data and set(again) == {MANIFEST, MODEL_FILE, REFERENCE_FILE, "weights.bin"}


def test_register_refuses_external_data_that_is_not_among_its_files(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = registry.get("v1")
    reference = registry.reference("v1")
    graph, data = external_graph(registry, "passwd", tmp_path)
    monkeypatch.chdir(tmp_path / "saved-passwd")  # ./passwd is there, beside the saved graph
    with pytest.raises(IntegrityError, match="'passwd' is not one of the version's own checksummed files"):
        registry.register(graph, v1.schema, reference, {}, trigger="manual", parent="v1")
    with pytest.raises(IntegrityError, match="'passwd' is not one of"):
        registry.register(graph, v1.schema, reference, {}, trigger="manual", parent="v1", external={"other.bin": data})
    for name in ("../passwd", "model.yaml", ".hidden", "sub/passwd"):
        with pytest.raises(IntegrityError, match="external data file name .* refused"):
            registry.register(graph, v1.schema, reference, {}, trigger="manual", parent="v1", external={name: data})
    assert [v.version for v in registry.versions()] == ["v1"]
    # nothing stored, no number used up: the next version is v2, and it loads with its own side file
    stored = registry.register(graph, v1.schema, reference, {}, trigger="manual", parent="v1",
                               external={"passwd": data})
    assert stored.version == "v2" and (stored.path / "passwd").read_bytes() == data
    monkeypatch.chdir(tmp_path)
    registry.load("v2").predict_frame(reference.head(3))
