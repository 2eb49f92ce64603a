"""The registry: versions with metadata, the champion pointer, and integrity on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from driftloop.models.errors import IntegrityError, RegistryError, UnknownVersion
from driftloop.models.registry import MODEL_FILE, REFERENCE_FILE, Registry


@pytest.fixture
def registry(champion_home: Path, tmp_path: Path) -> Registry:
    """A private copy of the session's registry (v1 champion), free to tamper with."""
    home = tmp_path / "home"
    shutil.copytree(champion_home / "bentoml", home)
    return Registry(home, "loans")


def test_version_carries_its_metadata(registry: Registry) -> None:
    v1 = registry.get("v1")
    meta = v1.metadata
    assert meta["trigger"] == "initial" and meta["parent"] is None
    assert set(meta["sha256"]) == {MODEL_FILE, REFERENCE_FILE}
    assert 0.5 < meta["metrics"]["accuracy"] <= 1.0
    assert meta["parity"]["label_agreement"] == 1.0 and meta["parity"]["max_abs_diff"] < 1e-4
    assert len(meta["data_fingerprint"]) == 64
    assert meta["libraries"]["scikit-learn"] and meta["code_revision"]
    assert len(meta["time_range"]) == 2 and meta["time_range"][0] < meta["time_range"][1]
    assert v1.schema.names == ["income", "age", "debt_ratio", "credit_lines", "region", "employment"]
    assert list(v1.schema.labels) == [0, 1]
    reference = registry.reference("v1")
    assert list(reference.columns) == v1.schema.names and len(reference) == 2000


def test_register_promote_rollback_history(registry: Registry) -> None:
    v1 = registry.get("v1")
    data = (v1.path / MODEL_FILE).read_bytes()
    v2 = registry.register(data, v1.schema, registry.reference("v1"), {"metrics": {"accuracy": 0.9}},
                           trigger="manual", parent="v1")
    assert v2.version == "v2" and [v.version for v in registry.versions()] == ["v1", "v2"]
    assert registry.champion().version == "v1"  # registering never promotes

    registry.promote("v2", actor="alice", reason="better")
    champion = registry.champion()
    assert (champion.version, champion.actor, champion.reason, champion.lineage) == ("v2", "alice", "better", ("v1",))

    registry.rollback(actor="bob", reason="regression")
    assert registry.champion().version == "v1" and registry.champion().lineage == ()
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(actor="bob", reason="again")
    actions = [(h["action"], h["version"], h["actor"]) for h in registry.history()]
    assert actions[-2:] == [("promote", "v2", "alice"), ("rollback", "v1", "bob")]


def test_unknown_version_lists_the_known_ones(registry: Registry) -> None:
    with pytest.raises(RegistryError, match=r"unknown version 'v9'.*\['v1'\]"):
        registry.get("v9")


def test_load_runs_the_graph(registry: Registry, loans) -> None:  # noqa: ANN001
    model = registry.load("v1")
    preds, proba = model.predict_frame(loans.head(5))
    assert preds.shape == (5,) and proba.shape == (5, 2)
    assert ((proba.sum(axis=1) - 1.0) ** 2 < 1e-10).all()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", [MODEL_FILE, REFERENCE_FILE])
def test_tampered_artifact_is_refused(registry: Registry, damage: str, name: str) -> None:
    path = registry.get("v1").path / name
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(IntegrityError, match=name):
        registry.load("v1")


def test_a_tampered_version_is_never_promoted(registry: Registry) -> None:
    v1 = registry.get("v1")
    v2 = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"), {},
                           trigger="manual", parent="v1")
    (v2.path / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(IntegrityError):
        registry.promote("v2", actor="mallory", reason="sneak")
    assert registry.champion().version == "v1"


def test_a_graph_that_cannot_run_is_refused(registry: Registry) -> None:
    """A checksum that matches garbage (written through the registry) still never serves."""
    v1 = registry.get("v1")
    registry.register(b"\x08\x07garbage", v1.schema, registry.reference("v1"), {}, trigger="manual", parent="v1")
    with pytest.raises(Exception, match="onnxruntime refused|warm-up|not a readable ONNX graph"):
        registry.load("v2")


def test_a_version_that_cannot_load_is_never_promoted_nor_shadowed(registry: Registry) -> None:
    """Promotion is a canary load: matching checksums are not enough (issue 13: a graph whose
    checksum was re-recorded was promoted, and every restarted worker answered 503)."""
    v1 = registry.get("v1")
    registry.register(b"\x08\x07garbage", v1.schema, registry.reference("v1"), {}, trigger="manual", parent="v1")
    registry.verify("v2")  # its checksums match
    with pytest.raises(Exception, match="onnxruntime refused|warm-up|not a readable ONNX graph"):
        registry.promote("v2", actor="test", reason="looks fine")
    with pytest.raises(Exception, match="onnxruntime refused|warm-up|not a readable ONNX graph"):
        registry.set_shadow("v2", actor="test", reason="looks fine")
    assert registry.champion().version == "v1" and registry.shadow() is None
    assert [h["action"] for h in registry.history()] == ["promote"]


@pytest.mark.parametrize("name", ["V1", "v01", " v1", "v1 ", "v1\n", "1", "v1/../v1", "latest"])
def test_version_names_are_matched_exactly(registry: Registry, name: str) -> None:
    """BentoML's store finds ``V1`` as v1; a pointer naming ``V1`` would name no version (issue 13:
    retention then deleted every version, the one being served included)."""
    with pytest.raises(UnknownVersion, match="versions are named v1, v2"):
        registry.get(name)
    with pytest.raises(UnknownVersion):
        registry.promote(name, actor="test", reason="case")
    assert registry.champion().version == "v1"


def test_retention_refuses_when_a_pointer_names_no_registered_version(registry: Registry) -> None:
    v1 = registry.get("v1")
    for _ in range(3):
        registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"), {},
                          trigger="manual", parent="v1")
    pointer = json.loads(registry.pointer_path.read_text())
    registry.pointer_path.write_text(json.dumps(pointer | {"version": "V1"}))  # as an older driftloop let it
    with pytest.raises(RegistryError, match="not registered versions.*refusing to prune"):
        registry.prune(0, 0)
    assert [v.version for v in registry.versions()] == ["v1", "v2", "v3", "v4"]


def _graph_with_external_weight(location: str) -> bytes:
    """A one-node graph (y = x + w) whose weight ``w`` lives in an external-data file."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
    return onnx.helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path: Path, location: str) -> None:
    import numpy as np

    from driftloop.models.onnx_model import check_external_data

    model_dir = tmp_path / "v1"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.float32(1.0).tobytes())
    with pytest.raises(IntegrityError, match="points outside the model directory"):
        check_external_data(_graph_with_external_weight(location), model_dir, [MODEL_FILE, "outside.bin"])


def test_external_data_must_be_one_of_the_versions_checksummed_files(tmp_path: Path) -> None:
    import numpy as np

    from driftloop.models.onnx_model import check_external_data

    own = [MODEL_FILE, REFERENCE_FILE, "weights.bin"]
    with pytest.raises(IntegrityError, match="is missing"):
        check_external_data(_graph_with_external_weight("weights.bin"), tmp_path, own)
    (tmp_path / "weights.bin").write_bytes(np.float32(1.0).tobytes())
    for location in ("weights.bin", "./weights.bin"):
        assert check_external_data(_graph_with_external_weight(location), tmp_path, own) == [tmp_path / "weights.bin"]
    assert check_external_data(b"", tmp_path, own) == []  # an empty graph names no files
    # a file that is there but has no checksum of the version's: refused, the tensor and location named
    (tmp_path / "passwd").write_bytes(np.float32(1.0).tobytes())
    with pytest.raises(IntegrityError, match=r"tensor 'w': external data location 'passwd' is not one of the "
                                             r"version's own checksummed files"):
        check_external_data(_graph_with_external_weight("passwd"), tmp_path, own)
