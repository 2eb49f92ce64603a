"""Registry maintenance from the CLI: ``models diff``, ``models export``/``import`` and ``models prune``."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.models.errors import IntegrityError, RegistryError
from driftloop.models.registry import MODEL_FILE, REFERENCE_FILE, Registry
from driftloop.models.schema import Feature, FeatureSchema

runner = CliRunner()
NEW_COMMANDS = [["models", "diff"], ["models", "export"], ["models", "import"], ["models", "prune"]]


@pytest.fixture
def config(champion_home: Path, tmp_path: Path) -> Path:
    """A config file whose registry is a private copy of the session's (v1 champion)."""
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    path = tmp_path / "driftloop.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"home": str(tmp_path / "bentoml"), "project": "loans"},
        "store": {"url": f"sqlite:///{tmp_path / 'driftloop.db'}"},
        "monitoring": {"reports_dir": str(tmp_path / "reports"), "metrics_port": 0},
    }))
    return path


@pytest.fixture
def registry(config: Path) -> Registry:
    return Registry(config.parent / "bentoml", "loans")


def cli(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, [*args, "--config", str(config)])


def register_like_v1(registry: Registry, schema: FeatureSchema | None = None, reference: pd.DataFrame | None = None,
                     **metadata: Any) -> str:
    """A new version with v1's graph (and, unless given, its schema and reference), measured on
    v1's validation rows (its ``evaluation`` record)."""
    v1 = registry.get("v1")
    kept = ("kind", "params", "data_fingerprint", "time_range", "evaluation")
    mv = registry.register((v1.path / MODEL_FILE).read_bytes(), schema or v1.schema,
                           registry.reference("v1") if reference is None else reference,
                           {k: v1.metadata[k] for k in kept} | metadata,
                           trigger="manual", parent="v1")
    return mv.version


@pytest.mark.parametrize("command", NEW_COMMANDS, ids=" ".join)
def test_new_commands_have_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--config" in result.output


# -- diff --------------------------------------------------------------------------------------
@pytest.fixture
def changed(registry: Registry) -> str:
    """v2: v1's graph with other metrics and a changed schema (a new region, a wider income range,
    ``credit_lines`` dropped, ``tenure`` added)."""
    v1 = registry.get("v1")
    feats = []
    for f in v1.schema.features:
        if f.name == "region":
            feats.append(Feature(f.name, f.kind, (*f.categories, "atlantis")))
        elif f.name == "income":
            feats.append(Feature(f.name, f.kind, min=f.min, max=f.max * 2))
        elif f.name != "credit_lines":
            feats.append(f)
    feats.append(Feature("tenure", "numeric", min=0.0, max=40.0))
    schema = FeatureSchema(tuple(feats), v1.schema.task, v1.schema.target, v1.schema.labels)
    reference = registry.reference("v1").assign(tenure=3.0)
    return register_like_v1(registry, schema, reference, metrics={"accuracy": 0.9123, "f1": 0.5})


def test_diff_shows_metrics_schema_and_fields_aligned(config: Path, registry: Registry, changed: str) -> None:
    acc1 = registry.get("v1").metrics["accuracy"]
    result = cli(config, "models", "diff", "v1", changed)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header, accuracy = lines[0], next(line for line in lines if line.strip().startswith("accuracy"))
    col_a, col_b, col_delta = header.index("v1"), header.index("v2"), header.index("delta")
    assert accuracy[col_a:].startswith(f"{acc1:.4f}") and accuracy[col_b:].startswith("0.9123")
    assert accuracy[col_delta:].strip() == f"{0.9123 - acc1:+.4f}"
    rows = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert "+atlantis" in rows["region"] and rows["income"].rstrip().endswith("range")
    assert rows["tenure"].rstrip().endswith("added") and rows["credit_lines"].rstrip().endswith("removed")
    assert rows["trigger"].split()[1:] == ["initial", "manual", "changed"]
    assert rows["kind"].rstrip().endswith("gradient_boosting")  # the same kind: no "changed"
    assert rows["roc_auc"].startswith("  roc_auc (binary) ") and rows["roc_auc"].endswith(" -")  # only v1 has it


def test_diff_json_is_machine_readable(config: Path, registry: Registry, changed: str) -> None:
    result = cli(config, "models", "diff", "v1", changed, "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    metrics = {m["name"]: m for m in diff["metrics"]}
    acc1 = registry.get("v1").metrics["accuracy"]
    assert metrics["accuracy"]["a"] == acc1 and metrics["accuracy"]["b"] == 0.9123
    assert metrics["accuracy"]["delta"] == pytest.approx(0.9123 - acc1)
    assert metrics["roc_auc"]["b"] is None and metrics["roc_auc"]["delta"] is None
    schema = diff["schema"]
    assert not schema["same"]
    assert schema["features_added"] == [{"name": "tenure", "kind": "numeric"}]
    assert schema["features_removed"] == [{"name": "credit_lines", "kind": "numeric"}]
    by_name = {f["name"]: f for f in schema["features_changed"]}
    assert by_name["region"]["categories_added"] == ["atlantis"] and by_name["region"]["categories_removed"] == []
    assert by_name["income"]["range"]["b"][1] == 2 * by_name["income"]["range"]["a"][1]
    fields = {f["name"]: f for f in diff["fields"]}
    assert fields["parent"] == {"name": "parent", "a": None, "b": "v1", "same": False}
    assert fields["data_fingerprint"]["same"] and fields["time_range"]["same"]
    has_importance = isinstance(registry.get("v1").metadata.get("importance"), dict)  # training may record it
    assert diff["importance"] is None and diff["importance_recorded"] == (["v1"] if has_importance else [])


def test_diff_of_identical_schemas_and_importance(config: Path, registry: Registry) -> None:
    without = register_like_v1(registry)
    only_one = register_like_v1(registry, importance={"income": 0.5, "age": 0.2})
    both = register_like_v1(registry, importance={"income": 0.25, "age": 0.2, "region": 0.1})
    text = cli(config, "models", "diff", only_one, both)
    assert text.exit_code == 0, text.output
    lines = {line.split()[0]: line for line in text.output.splitlines() if line.strip()}
    assert lines["schema"].rstrip().endswith("identical")
    assert lines["income"].split()[1:] == ["0.5000", "0.2500", "-0.2500"]
    assert lines["region"].split()[1:] == ["-", "0.1000"]  # a feature only the second one scores
    diff = json.loads(cli(config, "models", "diff", only_one, both, "--json").output)
    assert [(r["name"], r["delta"]) for r in diff["importance"]][:2] == [("income", -0.25), ("age", 0.0)]

    partial = cli(config, "models", "diff", without, only_one)
    assert partial.exit_code == 0 and f"recorded for {only_one} only" in partial.output
    assert json.loads(cli(config, "models", "diff", without, only_one, "--json").output)["importance"] is None


@pytest.fixture
def retrained(config: Path, registry: Registry, loans: pd.DataFrame) -> Any:
    """v2: a retrain with ``retraining.min_rows`` lowered, as issue 16 found it: 100 labelled live
    rows (prediction ids 1201..1300), 25 held out for the gate, 75 to fit: 60 trained on, 15 validated."""
    from driftloop.training.retrain import retrain
    from tests.conftest import make_settings

    settings = make_settings(config.parent, retraining={
        "min_rows": 100, "min_holdout_rows": 20, "margin": 0.0, "significance": 1.0,
        "tournament": {"enabled": False}})
    fresh = loans[loans["period"] == "covariate"].head(100).reset_index(drop=True)
    fresh.insert(0, "id", range(1201, 1301))  # as the prediction log hands them (FreshRows)
    outcome = retrain(settings, registry, fresh, trigger="drift", reason="test")
    assert outcome.candidate == "v2", outcome.reason
    return outcome


def test_a_retrained_versions_diff_names_its_rows_and_shows_the_gate_pair(config: Path, registry: Registry,
                                                                          retrained: Any) -> None:
    v1, v2 = registry.get("v1").metadata, registry.get("v2").metadata
    n1 = v1["rows"]["validation"]
    assert v1["evaluation"]["source"] == {"data": "initial", "name": "scenario loans"} and v1["evaluation"]["rows"] == n1
    assert v2["rows"] == {"train": 60, "validation": 15}
    assert v2["evaluation"]["source"]["prediction_ids"] == [1261, 1275]  # the newest 15 of the 75 fitted on
    gate = v2["gate"]
    assert gate["evaluation"]["rows"] == 25 and gate["evaluation"]["source"]["prediction_ids"] == [1276, 1300]
    # the retrain event carries both records (the gate's without the figures)
    assert retrained.validation == v2["evaluation"]
    assert {k: v for k, v in gate["evaluation"].items() if k != "metrics"} == retrained.holdout

    diff = json.loads(cli(config, "models", "diff", "v1", "v2", "--json").output)
    assert diff["evaluation"]["a"]["rows"] == n1 and diff["evaluation"]["b"]["rows"] == 15
    assert (diff["evaluation"]["same_rows"], diff["evaluation"]["why"]) == (False, "different rows")
    metrics = {m["name"]: m for m in diff["metrics"]}
    assert metrics["accuracy"]["set"] == {"a": "validation", "b": "validation"}
    assert metrics["accuracy"]["rows"] == {"a": n1, "b": 15}
    assert all(not m["comparable"] and m["delta"] is None and m["why"] == "different rows" for m in diff["metrics"])
    pair = diff["gate"]
    assert (pair["candidate"], pair["champion"], pair["set"], pair["rows"]) == ("v2", "v1", "holdout", 25)
    figures = {m["name"]: m for m in pair["metrics"]}
    assert (figures["accuracy"]["a"], figures["accuracy"]["b"]) == (gate["champion"], gate["candidate"])
    assert figures["accuracy"]["delta"] == pytest.approx(gate["candidate"] - gate["champion"])
    assert figures["f1"]["a"] == gate["evaluation"]["metrics"]["champion"]["f1"] and figures["f1"]["average"] == "macro"

    text = cli(config, "models", "diff", "v1", "v2")
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    validation = next(line for line in lines if line.startswith("  accuracy"))
    assert f"(validation, {n1} rows)" in validation and "(validation, 15 rows)" in validation
    assert validation.rstrip().endswith("not comparable (different rows)")
    at = lines.index(next(line for line in lines if line.startswith("gate: v2 judged against v1 on the same rows")))
    assert "prediction ids 1276..1300" in lines[at]
    holdout = lines[at + 1]
    assert holdout.startswith("  accuracy") and holdout.count("(holdout, 25 rows)") == 2
    assert holdout.rstrip().endswith(f"{gate['candidate'] - gate['champion']:+.4f}")

    reverse = json.loads(cli(config, "models", "diff", "v2", "v1", "--json").output)["gate"]
    accuracy = next(m for m in reverse["metrics"] if m["name"] == "accuracy")
    assert (accuracy["a"], accuracy["b"]) == (gate["candidate"], gate["champion"])  # sides follow the diff


def test_versions_without_the_records_still_diff_and_compare_nothing(config: Path, registry: Registry) -> None:
    """Versions registered before ``evaluation`` existed: rows from ``rows``, no delta (nothing
    proves the rows the same), the averages training has always used, an old gate's primary pair."""
    v1 = registry.get("v1")
    old = {k: v1.metadata[k] for k in ("kind", "params", "data_fingerprint", "time_range")}
    legacy_gate = {"metric": "accuracy", "candidate": 0.9, "champion": 0.8, "champion_version": "v1",
                   "margin": 0.01, "holdout_rows": 150, "holdout_source": "window", "passed": True}
    first = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                              old | {"metrics": {"accuracy": 0.8, "f1": 0.7}, "rows": {"train": 80, "validation": 20}},
                              trigger="manual", parent="v1").version
    second = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                               old | {"metrics": {"accuracy": 0.9, "f1": 0.8}, "rows": {"train": 80, "validation": 20},
                                      "gate": legacy_gate}, trigger="drift", parent="v1").version

    diff = json.loads(cli(config, "models", "diff", first, second, "--json").output)
    assert diff["evaluation"]["a"]["fingerprint"] is None and diff["evaluation"]["a"]["rows"] == 20
    f1 = next(m for m in diff["metrics"] if m["name"] == "f1")
    assert (f1["average"], f1["delta"], f1["why"]) == ("macro", None, "rows not recorded")
    assert diff["gate"] is None  # second's gate judged it against v1, not against first

    text = cli(config, "models", "diff", first, second)
    assert text.exit_code == 0, text.output
    f1_line = next(line for line in text.output.splitlines() if line.startswith("  f1 (macro)"))
    assert "(validation, 20 rows)" in f1_line and f1_line.rstrip().endswith("not comparable (rows not recorded)")

    with_gate = json.loads(cli(config, "models", "diff", "v1", second, "--json").output)
    assert with_gate["gate"]["metrics"] == [{"name": "accuracy", "average": None, "a": 0.8, "b": 0.9,
                                             "delta": pytest.approx(0.1)}]
    assert with_gate["gate"]["rows"] == 150 and with_gate["gate"]["fingerprint"] is None
    assert "150 held-out rows" in cli(config, "models", "diff", "v1", second).output
    shown = cli(config, "models", "show", first)
    assert shown.exit_code == 0 and json.loads(shown.output)["rows"] == {"train": 80, "validation": 20}


def test_averaged_metrics_say_which_average(config: Path, registry: Registry, loans: pd.DataFrame) -> None:
    """The recorded average is the one computed, the diff names it, and a macro figure is never
    set against a weighted one, even on the same rows."""
    from sklearn.metrics import f1_score

    from driftloop.training import evaluate

    assert evaluate.averages("classification", 2)["roc_auc"] == "binary"
    assert evaluate.averages("classification", 3) == {"precision": "macro", "recall": "macro", "f1": "macro",
                                                      "roc_auc": "macro_ovr"}
    assert evaluate.averages("regression", 0) == {}
    y, pred = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 1, 1, 0, 2, 1]  # imbalanced: the averages differ
    recorded = evaluate.averages("classification", 3)["f1"]
    assert evaluate.classification_metrics(y, pred, None, [0, 1, 2])["f1"] == f1_score(y, pred, average=recorded)
    assert f1_score(y, pred, average=recorded) != pytest.approx(f1_score(y, pred, average="weighted"))
    assert registry.get("v1").metadata["evaluation"]["averages"] == evaluate.averages("classification", 2)

    v1 = registry.get("v1")
    weighted = register_like_v1(registry, metrics={**v1.metrics, "f1": 0.5},
                                evaluation=v1.metadata["evaluation"] | {
                                    "averages": v1.metadata["evaluation"]["averages"] | {"f1": "weighted"}})
    diff = json.loads(cli(config, "models", "diff", "v1", weighted, "--json").output)
    metrics = {m["name"]: m for m in diff["metrics"]}
    assert diff["evaluation"]["same_rows"] and metrics["accuracy"]["delta"] == 0.0
    f1 = metrics["f1"]
    assert (f1["average"], f1["delta"], f1["why"]) == (None, None, "different averages")
    assert (metrics["precision"]["average"], metrics["precision"]["delta"]) == ("macro", 0.0)
    text = cli(config, "models", "diff", "v1", weighted).output.splitlines()
    f1_line, n = next(line for line in text if line.startswith("  f1 ")), v1.metadata["rows"]["validation"]
    assert f"{n} rows, macro)" in f1_line and f"{n} rows, weighted)" in f1_line
    assert f1_line.rstrip().endswith("not comparable (different averages)")
    assert any(line.startswith("  precision (macro) ") for line in text)


def test_diff_of_an_unknown_version_fails_cleanly(config: Path) -> None:
    result = cli(config, "models", "diff", "v1", "v9")
    assert result.exit_code == 2 and "unknown version 'v9'" in result.output


# -- export / import ---------------------------------------------------------------------------
def read_archive(path: Path) -> dict[str, bytes]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_archive(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """An archive with exactly these members (names not checked), plus symlinks name -> target."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            for name, target in (links or {}).items():
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16
                zf.writestr(info, target)
        return path
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_export_import_round_trip_predicts_identically(config: Path, registry: Registry, loans: pd.DataFrame,
                                                        tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / "out" / f"loans-v1{suffix}"
    exported = cli(config, "models", "export", "v1", str(archive))
    assert exported.exit_code == 0, exported.output
    v1 = registry.get("v1")
    members = read_archive(archive)
    assert set(members) == {"manifest.json", MODEL_FILE, REFERENCE_FILE}
    manifest = json.loads(members["manifest.json"])
    assert manifest["metadata"] == v1.metadata and (manifest["project"], manifest["version"]) == ("loans", "v1")
    assert {n: f["sha256"] for n, f in manifest["files"].items()} == v1.metadata["sha256"]

    imported = cli(config, "models", "import", str(archive))
    assert imported.exit_code == 0, imported.output
    assert "as loans:v2" in imported.output
    v2 = registry.get("v2")
    meta = v2.metadata
    assert meta["trigger"] == "manual" and meta["parent"] is None
    assert {k: meta["imported_from"][k] for k in ("project", "version", "exported_at")} == \
        {"project": "loans", "version": "v1", "exported_at": manifest["exported_at"]}
    for key in ("metrics", "kind", "params", "data_fingerprint", "time_range", "parity", "libraries"):
        assert meta[key] == v1.metadata[key], key
    assert meta["sha256"][MODEL_FILE] == v1.metadata["sha256"][MODEL_FILE]
    assert registry.champion().version == "v1"  # importing never promotes
    assert registry.history()[-1]["action"] == "import" and registry.history()[-1]["version"] == "v2"

    rows = loans.sample(25, random_state=3)
    (p1, q1), (p2, q2) = registry.load("v1").predict_frame(rows), registry.load("v2").predict_frame(rows)
    assert np.array_equal(p1, p2) and np.array_equal(q1, q2)
    pd.testing.assert_frame_equal(registry.reference("v1"), registry.reference("v2"))


def test_import_into_another_registry_starts_at_v1(registry: Registry, tmp_path: Path) -> None:
    archive = registry.export("v1", tmp_path / "a.tgz")
    other = Registry(tmp_path / "elsewhere", "loans-copy")
    mv = other.import_(archive, actor="carol")
    assert mv.tag == "loans-copy:v1" and other.champion() is None
    assert mv.metadata["imported_from"]["project"] == "loans" and mv.metadata["imported_from"]["imported_by"] == "carol"
    with pytest.raises(RegistryError, match="already exists"):
        registry.export("v1", archive)
    assert registry.export("v1", archive, overwrite=True) == archive


def flip(data: bytes, at: int = 200) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_a_tampered_archive_is_refused_and_registers_nothing(config: Path, registry: Registry, tmp_path: Path,
                                                              suffix: str) -> None:
    good = read_archive(registry.export("v1", tmp_path / f"good{suffix}"))
    bad = write_archive(tmp_path / f"bad{suffix}", good | {MODEL_FILE: flip(good[MODEL_FILE])})
    with pytest.raises(IntegrityError, match=rf"{MODEL_FILE} checksum mismatch"):
        registry.import_(bad, actor="mallory")
    result = cli(config, "models", "import", str(bad))
    assert result.exit_code == 2 and MODEL_FILE in result.output and "checksum" in result.output
    assert [v.version for v in registry.versions()] == ["v1"]
    assert all(h["action"] != "import" for h in registry.history())


def test_rewritten_checksums_still_disagree_with_the_metadata(registry: Registry, tmp_path: Path) -> None:
    """Changing a file and the manifest's checksum of it is caught by the metadata's own checksum."""
    good = read_archive(registry.export("v1", tmp_path / "good.tar.gz"))
    manifest = json.loads(good["manifest.json"])
    reference = flip(good[REFERENCE_FILE], at=len(good[REFERENCE_FILE]) // 2)
    manifest["files"][REFERENCE_FILE]["sha256"] = hashlib.sha256(reference).hexdigest()
    bad = write_archive(tmp_path / "bad.tar.gz", good | {REFERENCE_FILE: reference,
                                                         "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(IntegrityError, match=rf"checksum of {REFERENCE_FILE} disagrees"):
        registry.import_(bad, actor="mallory")
    assert [v.version for v in registry.versions()] == ["v1"]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
@pytest.mark.parametrize(("extra", "links", "message"), [
    ({"../evil": b"x"}, {}, "path traversal"),
    ({"/tmp/evil": b"x"}, {}, "absolute path"),
    ({"notes.txt": b"x"}, {}, "unexpected member 'notes.txt'"),
    ({}, {"evil": "/etc/passwd"}, "'evil' is a link"),
], ids=["traversal", "absolute", "unexpected", "symlink"])
def test_unsafe_members_are_refused(config: Path, registry: Registry, tmp_path: Path, suffix: str,
                                    extra: dict[str, bytes], links: dict[str, str], message: str) -> None:
    good = read_archive(registry.export("v1", tmp_path / f"good{suffix}"))
    (tmp_path / "deep").mkdir()
    bad = write_archive(tmp_path / "deep" / f"bad{suffix}", good | extra, links)
    with pytest.raises(IntegrityError, match=message):
        registry.import_(bad, actor="mallory")
    result = cli(config, "models", "import", str(bad))
    assert result.exit_code == 2 and "error:" in result.output
    assert [v.version for v in registry.versions()] == ["v1"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()


def test_a_symlink_in_place_of_the_model_is_refused(registry: Registry, tmp_path: Path) -> None:
    good = read_archive(registry.export("v1", tmp_path / "good.tar.gz"))
    bad = write_archive(tmp_path / "bad.tar.gz", {k: v for k, v in good.items() if k != MODEL_FILE},
                        links={MODEL_FILE: str(registry.get("v1").path / MODEL_FILE)})
    with pytest.raises(IntegrityError, match=f"'{MODEL_FILE}' is a link"):
        registry.import_(bad, actor="mallory")


def test_a_member_given_twice_is_refused(registry: Registry, tmp_path: Path) -> None:
    """A reader that checked one copy and registered the other would be fooled: both are refused."""
    good = read_archive(registry.export("v1", tmp_path / "good.tar.gz"))
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:  # the good members, then a second, different model.onnx
        for name, data in [*good.items(), (MODEL_FILE, flip(good[MODEL_FILE]))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(IntegrityError, match=f"'{MODEL_FILE}' appears twice"):
        registry.import_(bad, actor="mallory")
    assert [v.version for v in registry.versions()] == ["v1"]


@pytest.mark.parametrize("damage", ["not an archive", "truncated", "no manifest", "missing file"])
def test_broken_archives_are_refused(registry: Registry, tmp_path: Path, damage: str) -> None:
    path = registry.export("v1", tmp_path / "good.tar.gz")
    good = read_archive(path)
    if damage == "not an archive":
        bad, message = tmp_path / "bad.tar.gz", "not a .tar.gz or .zip"
        bad.write_bytes(b"just some text")
    elif damage == "truncated":
        bad, message = tmp_path / "bad.tar.gz", "unreadable archive|listed in the manifest but not"
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "no manifest":
        bad, message = write_archive(tmp_path / "bad.tar.gz", {MODEL_FILE: good[MODEL_FILE]}), "no manifest.json"
    else:
        bad = write_archive(tmp_path / "bad.tar.gz", {k: v for k, v in good.items() if k != REFERENCE_FILE})
        message = f"{REFERENCE_FILE} is listed in the manifest but not in the archive"
    with pytest.raises(IntegrityError, match=message):
        registry.import_(bad, actor="mallory")
    assert [v.version for v in registry.versions()] == ["v1"]


def test_export_refuses_an_unknown_suffix_and_a_tampered_version(config: Path, registry: Registry,
                                                                  tmp_path: Path) -> None:
    result = cli(config, "models", "export", "v1", str(tmp_path / "v1.rar"))
    assert result.exit_code == 2 and ".tar.gz" in result.output
    (registry.get("v1").path / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(IntegrityError, match=MODEL_FILE):
        registry.export("v1", tmp_path / "v1.zip")
    assert not (tmp_path / "v1.zip").exists() and list(tmp_path.glob(".v1.zip*")) == []


# -- prune -------------------------------------------------------------------------------------
@pytest.fixture
def busy(registry: Registry) -> Registry:
    """v1..v7; champions v1 -> v2 -> v4 -> v5 (lineage v1, v2, v4); v3, v6, v7 never promoted."""
    for _ in range(6):
        register_like_v1(registry)
    for version in ("v2", "v4", "v5"):
        registry.promote(version, actor="test", reason="setup")
    assert registry.champion().lineage == ("v1", "v2", "v4")
    return registry


def test_prune_keeps_champion_lineage_and_newest_candidates(config: Path, busy: Registry) -> None:
    result = cli(config, "models", "prune", "--keep-ancestors", "1", "--keep-candidates", "1", "--reason", "tidy")
    assert result.exit_code == 0, result.output
    deleted = [line.split()[1] for line in result.output.splitlines() if line.startswith("deleted")]
    assert deleted == ["v1", "v2", "v3", "v6"]
    assert [v.version for v in busy.versions()] == ["v4", "v5", "v7"]
    assert busy.champion().version == "v5"
    assert "kept v5     champion" in result.output
    records = [h for h in busy.history() if h["action"] == "delete"]
    assert [r["version"] for r in records] == deleted
    assert all(r["actor"] and r["reason"].startswith("tidy: ") for r in records)
    assert "candidate beyond the 1 most recent" in records[2]["reason"]
    assert "earlier champion beyond" in records[0]["reason"]

    assert busy.rollback(actor="test", reason="the kept ancestor still works").version == "v4"
    busy.load("v4")
    assert register_like_v1_from(busy, "v4") == "v8"  # numbers are never reused


def register_like_v1_from(registry: Registry, source: str) -> str:
    mv = registry.get(source)
    return registry.register((mv.path / MODEL_FILE).read_bytes(), mv.schema, registry.reference(source), {},
                             trigger="manual", parent=source).version


def test_prune_dry_run_deletes_nothing(config: Path, busy: Registry) -> None:
    before = [(v.version, v.path) for v in busy.versions()]
    result = cli(config, "models", "prune", "--keep-ancestors", "0", "--keep-candidates", "0", "--dry-run")
    assert result.exit_code == 0, result.output
    would = [line.split()[2] for line in result.output.splitlines() if line.startswith("would delete")]
    assert would == ["v1", "v2", "v3", "v4", "v6", "v7"] and "6 version(s) would be deleted" in result.output
    assert [(v.version, v.path) for v in busy.versions()] == before and all(p.is_dir() for _, p in before)
    assert all(h["action"] != "delete" for h in busy.history())
    assert busy.prune(0, 0, dry_run=True) == would


def test_prune_to_nothing_but_the_champion_and_no_reuse_of_the_newest(busy: Registry) -> None:
    assert busy.prune(0, 0, actor="ops", reason="cleanup") == ["v1", "v2", "v3", "v4", "v6", "v7"]
    assert [v.version for v in busy.versions()] == ["v5"] and busy.champion().version == "v5"
    busy.load("v5")
    assert busy.prune(0, 0) == []  # idempotent
    assert register_like_v1_from(busy, "v5") == "v8"  # v7 was the newest and is gone: not reused
    with pytest.raises(RegistryError, match="nothing to roll back|unknown version"):
        busy.rollback(actor="ops", reason="beyond the kept lineage")


def test_prune_keeps_every_lineage_entry_within_n(busy: Registry) -> None:
    busy.promote("v2", actor="test", reason="back to an old one")  # lineage v1, v2, v4, v5
    plan = busy.retention_plan(keep_ancestors=2, keep_candidates=0)
    assert list(plan.keep) == ["v2", "v4", "v5"] and list(plan.delete) == ["v1", "v3", "v6", "v7"]
    busy.prune(2, 0)
    assert busy.rollback(actor="t", reason="1").version == "v5"
    assert busy.rollback(actor="t", reason="2").version == "v4"


def test_prune_refuses_without_a_champion_or_with_negative_counts(config: Path, tmp_path: Path,
                                                                  registry: Registry) -> None:
    with pytest.raises(RegistryError, match=">= 0"):
        registry.prune(-1, 0)
    result = cli(config, "models", "prune", "--keep-ancestors", "-1", "--keep-candidates", "0")
    assert result.exit_code == 2
    registry.pointer_path.unlink()
    with pytest.raises(RegistryError, match="no champion"):
        registry.prune(1, 1)
    assert [v.version for v in registry.versions()] == ["v1"]


def test_a_refused_promotion_from_the_cli_is_recorded_like_the_services(config: Path, registry: Registry) -> None:
    from driftloop.monitoring.store import PredictionStore

    broken = registry.register(b"\x08\x07garbage", registry.get("v1").schema, registry.reference("v1"), {},
                               trigger="manual", parent="v1").version
    for name in ("V1", broken):
        result = cli(config, "models", "promote", name, "--reason", "try")
        assert result.exit_code != 0 and registry.champion().version == "v1"
    store = PredictionStore(f"sqlite:///{config.parent / 'driftloop.db'}")
    try:
        events = store.events("promotion_refused")
    finally:
        store.close()
    assert [e["detail"]["version"] for e in events] == ["V1", broken]
    assert "versions are named v1, v2" in events[0]["detail"]["error"] and events[1]["detail"]["reason"] == "try"
