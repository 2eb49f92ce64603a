"""The model registry: versions on BentoML's model store, plus the champion pointer.

A version is a BentoML model ``<project>:v<N>`` whose directory holds ``model.onnx`` and
``reference.parquet`` (the drift baseline), with driftloop's metadata (schema, metrics,
lineage, sha256 of every file, ...) in BentoML's own ``model.yaml``.

The champion pointer is ``<home>/driftloop/<project>/champion.json``: a small file replaced
atomically (write, fsync, rename) under a file lock, so every serving worker can poll it cheaply
and never reads half a promotion. Every promotion, rollback, import and deletion is appended, with
who and why, to ``history.jsonl`` beside it.

The shadow pointer, ``shadow.json`` beside it, names at most one version that the serving
workers score live traffic with beside the champion (off the request path: the champion still
answers; see :mod:`service.serving`). Its :class:`ShadowRole` says why: a ``candidate`` waits for
the shadow judge to promote or reject it (:mod:`monitoring.shadow`); a ``watch`` is the previous
champion, kept scoring after a promotion so that the promotion can be rolled back if the new
champion proves significantly worse (:mod:`monitoring.watch`). A pointer written before roles
existed is a candidate. It is written the same way, each change is in the history
(``shadow_set`` with its role, ``shadow_clear``), it never names the champion (a version that
becomes champion stops being the shadow, under the same lock), and retention keeps its version.
The champion pointer records the action that wrote it (``promote`` or ``rollback``). Version
numbers are never reused: ``last_version`` there remembers the highest one ever registered, so a
pruned ``v7`` is never a different model later.

Moving a version between registries (one archive file) lives in :mod:`models.archive`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.adapters import bentoml as store_api
from driftloop.models.errors import ExportError, IntegrityError, RegistryError, UnknownVersion
from driftloop.models.files import write_text_atomically
from driftloop.models.lazy import lazy_module
from driftloop.models.onnx_model import OnnxModel, check_external_data
from driftloop.models.schema import FeatureSchema
from driftloop.vocabulary import Trigger

if TYPE_CHECKING:
    import pandas as pd
else:
    pd = lazy_module("pandas")  # the reference sample's; a serving worker never reads it

MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.parquet"
TRIGGERS = tuple(t.value for t in Trigger)  # a version's metadata ``trigger``
DIFF_FIELDS = ("kind", "params", "trigger", "parent", "data_fingerprint", "time_range")
_VERSION = re.compile(r"^v([1-9][0-9]*)$")  # exactly: v1, v2, ... (no v01, no V1)
# A graph's external-data file: a plain name in the version's directory (no path, no leading dot)
EXTERNAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# ...but not one of the version's own files, BentoML's model.yaml beside them or an archive's manifest
RESERVED_NAMES = frozenset((MODEL_FILE, REFERENCE_FILE, "model.yaml", "manifest.json"))


@dataclass(frozen=True)
class ModelVersion:
    """What the registry knows about one version (no model loaded)."""

    project: str
    version: str
    path: Path
    created_at: datetime
    metadata: dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.project}:{self.version}"

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.metadata["schema"])

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.metadata.get("metrics", {}))


@dataclass(frozen=True)
class Champion:
    version: str
    promoted_at: str
    actor: str
    reason: str
    lineage: tuple[str, ...]  # earlier champions, oldest first (rollback pops the last)
    action: str = "promote"  # what wrote the pointer: promote or rollback (older pointers: promote)


class ShadowRole(StrEnum):
    """Why a version is scored beside the champion."""

    CANDIDATE = "candidate"  # passed the gate; the shadow judge promotes or rejects it
    WATCH = "watch"  # the champion's predecessor, after a promotion; the promotion watch may roll back to it


@dataclass(frozen=True)
class Shadow:
    """The version scored beside the champion (``shadow.json``), and why."""

    version: str
    set_at: str
    actor: str
    reason: str
    role: ShadowRole = ShadowRole.CANDIDATE


@dataclass(frozen=True)
class RetentionPlan:
    """What :meth:`Registry.prune` keeps and deletes, each version with why (oldest first)."""

    keep: dict[str, str]
    delete: dict[str, str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def diff_versions(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """``a`` and ``b`` side by side, as plain JSON-able data.

    Each version's ``metrics`` were measured on its own validation rows, which are rarely the same:
    a figure means little without its rows. ``evaluation`` holds both sides' record of them
    (:func:`evaluation_of`), ``same_rows`` and ``why`` not. ``metrics`` are rows ``{name, average,
    a, b, set, rows, comparable, why, delta}``: ``set`` and ``rows`` per side; ``average`` names
    how an averaged metric averages over classes; ``delta`` (``b - a``) only when ``comparable``
    (the same rows, by fingerprint, and the same average), else None and ``why`` says why
    ("different rows", "rows not recorded", "different averages").

    ``gate``: when one version's retrain gate judged it against the other, both on the same held-out
    rows, that pair of figures (:func:`_gate_pair`): the comparable one; else None.

    ``importance`` rows are ``{name, a, b, delta}``, None unless both versions record one (a
    feature -> score dict). ``fields`` compares :data:`DIFF_FIELDS`; ``schema`` lists what changed.
    """
    ia, ib = a.metadata.get("importance"), b.metadata.get("importance")
    both = isinstance(ia, dict) and isinstance(ib, dict)
    ea, eb = evaluation_of(a), evaluation_of(b)
    same, why = _same_rows(ea, eb)
    return {
        "a": a.version, "b": b.version, "project": a.project,
        "evaluation": {"a": ea, "b": eb, "same_rows": same, "why": why},
        "metrics": _metric_rows(a.metrics, b.metrics, ea, eb, why),
        "gate": _gate_pair(a, b),
        "fields": [{"name": k, "a": a.metadata.get(k), "b": b.metadata.get(k),
                    "same": a.metadata.get(k) == b.metadata.get(k)} for k in DIFF_FIELDS],
        "schema": _schema_diff(a.metadata.get("schema") or {}, b.metadata.get("schema") or {}),
        "importance": _side_by_side(ia, ib) if both else None,
        "importance_recorded": [mv.version for mv, imp in ((a, ia), (b, ib)) if isinstance(imp, dict)],
    }


def evaluation_of(mv: ModelVersion) -> dict[str, Any]:
    """What ``mv``'s ``metrics`` were measured on: its ``metadata["evaluation"]`` (``set``, ``rows``,
    ``source``, ``description``, ``fingerprint``, ``averages``; see training/train.py), or, for a
    version registered before that was recorded, what its metadata still says: the validation
    split, its row count, no fingerprint (so nothing is known comparable), and the averages
    training/evaluate.py has always used."""
    recorded = mv.metadata.get("evaluation")
    if isinstance(recorded, dict):
        return recorded
    schema = mv.metadata.get("schema") or {}
    return {"set": "validation", "rows": (mv.metadata.get("rows") or {}).get("validation"), "source": None,
            "description": "its validation split (the rows were not recorded)", "fingerprint": None,
            "averages": _legacy_averages(schema.get("task"), len(schema.get("labels") or ()))}


def _legacy_averages(task: str | None, labels: int) -> dict[str, str]:
    """How the classification metrics of a version without a recorded ``averages`` were averaged:
    as training/evaluate.py has done since its first version (macro; ``roc_auc`` on the second
    label's probability for two classes, one-vs-rest macro for more). History, not a second copy
    of today's rule: a change there must not rewrite what old versions measured."""
    if task != "classification":
        return {}
    return {"precision": "macro", "recall": "macro", "f1": "macro", "roc_auc": "binary" if labels == 2 else "macro_ovr"}


def _same_rows(ea: dict[str, Any], eb: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether two evaluation records are of the same rows, and if not, why: only a recorded
    fingerprint proves it (two versions validated on "84 rows" rarely validated on the same 84)."""
    fa, fb = ea.get("fingerprint"), eb.get("fingerprint")
    if fa and fb:
        return (True, None) if fa == fb else (False, "different rows")
    if ea.get("rows") is not None and eb.get("rows") is not None and ea["rows"] != eb["rows"]:
        return False, "different rows"
    return False, "rows not recorded"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _metric_rows(a: dict[str, Any], b: dict[str, Any], ea: dict[str, Any], eb: dict[str, Any],
                 why_not: str | None) -> list[dict[str, Any]]:
    """One row per metric of either version (see :func:`diff_versions`)."""
    out = []
    for name in {**a, **b}:
        avg_a, avg_b = ((e.get("averages") or {}).get(name) for e in (ea, eb))
        if name not in a or name not in b:  # one side's average is the only one
            avg_a = avg_b = avg_a or avg_b
        why = why_not or (None if avg_a == avg_b else "different averages")
        delta = b[name] - a[name] if why is None and _number(a.get(name)) and _number(b.get(name)) else None
        out.append({"name": name, "average": avg_a if avg_a == avg_b else None, "a": a.get(name), "b": b.get(name),
                    "set": {"a": ea.get("set"), "b": eb.get("set")}, "rows": {"a": ea.get("rows"), "b": eb.get("rows")},
                    "comparable": why is None, "why": why, "delta": delta})
    return out


def _gate_pair(a: ModelVersion, b: ModelVersion) -> dict[str, Any] | None:
    """The figures of a retrain gate that scored one of ``a`` and ``b`` against the other (the
    candidate's ``metadata["gate"]`` names the other as ``champion_version``), sides as in the
    diff: both on the same held-out rows, so every ``delta`` is comparable. Gates recorded before
    their ``evaluation`` was give the primary metric alone. ``guard``: the pair on the guard set."""
    for candidate, champion in ((b, a), (a, b)):
        gate = candidate.metadata.get("gate")
        if isinstance(gate, dict) and gate.get("champion_version") == champion.version:
            break
    else:
        return None
    record = gate.get("evaluation") or {}
    metric = gate.get("metric")
    figures = record.get("metrics") or {"candidate": {}, "champion": {}}
    # the verdict's own figures for the primary metric (the paired test's), the rest for the record
    mine, theirs = dict(figures["candidate"]), dict(figures["champion"])
    if metric:
        mine[metric], theirs[metric] = gate.get("candidate"), gate.get("champion")
    side_a, side_b = (theirs, mine) if candidate is b else (mine, theirs)
    averages = record.get("averages") or {}
    rows = gate.get("holdout_rows")
    guard = gate.get("guard")
    return {
        "candidate": candidate.version, "champion": champion.version, "set": record.get("set", "holdout"),
        "rows": rows, "weighted": bool(gate.get("weighted")),
        "description": record.get("description") or f"{rows} held-out rows ({gate.get('holdout_source')})",
        "fingerprint": record.get("fingerprint"),
        "metrics": [{"name": k, "average": averages.get(k), "a": side_a.get(k), "b": side_b.get(k),
                     "delta": side_b[k] - side_a[k] if _number(side_a.get(k)) and _number(side_b.get(k)) else None}
                    for k in {**side_a, **side_b}],
        "guard": None if not isinstance(guard, dict) else _guard_pair(guard, candidate is b),
    }


def _guard_pair(guard: dict[str, Any], candidate_is_b: bool) -> dict[str, Any]:
    a, b = guard.get("candidate"), guard.get("champion")
    if candidate_is_b:
        a, b = b, a
    return {"metric": guard.get("metric"), "rows": guard.get("rows"), "a": a, "b": b,
            "delta": b - a if _number(a) and _number(b) else None}


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "a": a.get(k), "b": b.get(k),
             "delta": b[k] - a[k] if _number(a.get(k)) and _number(b.get(k)) else None} for k in {**a, **b}]


def _schema_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    fa = {f["name"]: f for f in a.get("features", [])}
    fb = {f["name"]: f for f in b.get("features", [])}
    fields = [{"name": k, "a": a.get(k), "b": b.get(k)} for k in ("task", "target", "labels") if a.get(k) != b.get(k)]
    common = [n for n in fa if n in fb]
    if common != [n for n in fb if n in fa]:  # the graph's inputs are in schema order
        fields.append({"name": "feature_order", "a": list(fa), "b": list(fb)})
    changed = []
    for name in common:
        x, y = fa[name], fb[name]
        change: dict[str, Any] = {}
        if x["kind"] != y["kind"]:
            change["kind"] = {"a": x["kind"], "b": y["kind"]}
        elif x["kind"] == "categorical":
            cx, cy = list(x.get("categories", ())), list(y.get("categories", ()))
            plus, minus = [c for c in cy if c not in cx], [c for c in cx if c not in cy]
            if plus or minus:
                change |= {"categories_added": plus, "categories_removed": minus}
        elif (x.get("min"), x.get("max")) != (y.get("min"), y.get("max")):
            change["range"] = {"a": [x.get("min"), x.get("max")], "b": [y.get("min"), y.get("max")]}
        if change:
            changed.append({"name": name} | change)
    added = [{"name": n, "kind": fb[n]["kind"]} for n in fb if n not in fa]
    removed = [{"name": n, "kind": fa[n]["kind"]} for n in fa if n not in fb]
    return {"same": not (fields or added or removed or changed), "fields": fields,
            "features_added": added, "features_removed": removed, "features_changed": changed}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, inode) of a pointer file, None if there is none: replacing it changes both."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino


def _replace_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically: a reader sees the old file or the new, never half."""
    write_text_atomically(path, json.dumps(record))


def project_dir(home: str | Path, project: str) -> Path:
    """driftloop's own files of a project beside BentoML's model store: the champion and shadow
    pointers, the history, training reports, the guard set."""
    return Path(home) / "driftloop" / project


class Registry:
    """Versions and champion of one project in a BentoML model store rooted at ``home``."""

    def __init__(self, home: str | Path, project: str) -> None:
        self.home = Path(home)
        self.project = project
        self._store = store_api.model_store(self.home / "models")  # the store BENTOML_HOME would give
        self.project_dir = project_dir(self.home, project)
        self.pointer_path = self.project_dir / "champion.json"
        self.shadow_path = self.project_dir / "shadow.json"
        self.history_path = self.project_dir / "history.jsonl"
        self._last_version_path = self.project_dir / "last_version"

    # -- versions -------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        """Every version of the project, oldest first."""
        try:
            items = store_api.list_models(self._store, self.project)
        except Exception:  # the project has no models yet
            return []
        out = [self._version_of(m) for m in items if _VERSION.fullmatch(m.tag.version or "")]
        return sorted(out, key=lambda v: int(v.version[1:]))

    def get(self, version: str) -> ModelVersion:
        """The registered ``version`` (exactly ``v<number>``: BentoML's store matches tags without
        regard to case, so ``V1`` would find v1 while a pointer naming ``V1`` names no version)."""
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise UnknownVersion(f"unknown version {version!r} of {self.project!r}: versions are named v1, v2, ...; "
                                 f"known: {[v.version for v in self.versions()]}")
        try:
            return self._version_of(store_api.get_model(self._store, f"{self.project}:{version}"))
        except Exception:
            known = [v.version for v in self.versions()]
            raise UnknownVersion(f"unknown version {version!r} of {self.project!r}; known: {known}") from None

    def _version_of(self, model: Any) -> ModelVersion:
        meta = json.loads(model.info.metadata.get("driftloop", "{}"))
        return ModelVersion(self.project, model.tag.version, Path(model.path), model.info.creation_time, meta)

    def register(self, onnx_bytes: bytes, schema: FeatureSchema, reference: pd.DataFrame,
                 metadata: dict[str, Any], trigger: str, parent: str | None,
                 external: Mapping[str, bytes] | None = None) -> ModelVersion:
        """Store a new version; returns it. The champion is not changed.

        ``external``: the graph's external-data files by name (plain names, stored beside
        ``model.onnx`` with their checksums). A graph whose external data names any other file is
        refused (:func:`~driftloop.models.onnx_model.check_external_data`) before it is stored."""
        if trigger not in TRIGGERS:
            raise RegistryError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
        external = dict(external or {})
        for name in external:
            if not EXTERNAL_NAME.fullmatch(name) or name in RESERVED_NAMES:
                raise IntegrityError(f"external data file name {name!r} refused: a plain file name "
                                     f"({EXTERNAL_NAME.pattern}) other than {sorted(RESERVED_NAMES)}")
        ref = io.BytesIO()
        reference[schema.names].reset_index(drop=True).to_parquet(ref, index=False)
        files = {MODEL_FILE: onnx_bytes, REFERENCE_FILE: ref.getvalue(), **external}
        meta = dict(metadata) | {
            "schema": schema.to_dict(),
            "trigger": trigger,
            "parent": parent,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        with self._lock():
            number = self._high_water() + 1
            version = f"v{number}"
            # One JSON string: BentoML's metadata refuses None and would coerce types.
            with store_api.create_model(self._store, f"{self.project}:{version}",
                                        metadata={"driftloop": json.dumps(meta)},
                                        labels={"trigger": str(trigger), "task": schema.task},
                                        module="driftloop") as model:
                for name, data in files.items():
                    with open(model.path_of(name), "wb") as fh:
                        fh.write(data)
                try:  # raising here stores nothing: the graph may name only the files just written
                    check_external_data(onnx_bytes, Path(model.path), files)
                except ExportError:
                    pass  # not a readable graph, so it names no file: loading it is refused (promote's canary)
            self._last_version_path.write_text(f"{number}\n")
        return self.get(version)

    def _high_water(self) -> int:
        """The highest version number ever registered here (the store's or ``last_version``'s)."""
        existing = [int(v.version[1:]) for v in self.versions()]
        try:
            recorded = int(self._last_version_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            recorded = 0
        return max([recorded, *existing])

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Two versions side by side (see :func:`diff_versions`)."""
        return diff_versions(self.get(a), self.get(b))

    # -- moving versions between registries (models/archive.py) ----------------------------------
    def export(self, version: str, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the verified ``version`` to one ``.tar.gz`` or ``.zip`` archive with a manifest."""
        from driftloop.models.archive import export_version

        return export_version(self, version, Path(path), overwrite=overwrite)

    def import_(self, path: str | Path, actor: str) -> ModelVersion:
        """Register an archive from :meth:`export` as a new version, after verifying all of it."""
        from driftloop.models.archive import import_version

        return import_version(self, Path(path), actor)

    # -- loading (always verified) ---------------------------------------------------------------
    def verify(self, version: str) -> ModelVersion:
        """Check every file's sha256 against the metadata; raises :class:`IntegrityError`."""
        mv = self.get(version)
        self._check(mv)
        return mv

    def _check(self, mv: ModelVersion, loaded: dict[str, bytes] | None = None) -> None:
        """Every file against its recorded sha256; ``loaded`` files are hashed from the bytes
        about to be used, so what is checked is what runs."""
        loaded = loaded or {}
        expected = mv.metadata.get("sha256") or {}
        if MODEL_FILE not in expected:
            raise IntegrityError(f"{mv.tag}: metadata lists no checksum for {MODEL_FILE}; refusing to load it")
        for name, digest in expected.items():
            path = mv.path / name
            if name not in loaded and not path.is_file():
                raise IntegrityError(f"{mv.tag}: {name} is missing")
            actual = hashlib.sha256(loaded[name]).hexdigest() if name in loaded else sha256_file(path)
            if actual != digest:
                raise IntegrityError(f"{mv.tag}: {name} checksum mismatch (expected {digest[:12]}..., "
                                     f"found {actual[:12]}...); the file was changed or truncated")

    def load(self, version: str, providers: list[str] | None = None) -> OnnxModel:
        """The verified version as a ready ONNX model (a warm-up prediction has run)."""
        mv = self.get(version)
        try:
            onnx_bytes = (mv.path / MODEL_FILE).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{mv.tag}: {MODEL_FILE} is missing") from None
        self._check(mv, {MODEL_FILE: onnx_bytes})
        try:  # side files: only the version's own, checksummed above
            external = check_external_data(onnx_bytes, mv.path, mv.metadata["sha256"])
        except IntegrityError as exc:
            raise IntegrityError(f"{mv.tag}: {exc}") from None
        model = OnnxModel.from_bytes(version, mv.schema, onnx_bytes, mv.metadata, providers=providers,
                                     source=mv.path / MODEL_FILE if external else None)
        model.warm_up()  # on the schema's example row: the reference sample is the monitor's
        return model

    def reference(self, version: str) -> pd.DataFrame:
        mv = self.get(version)
        return pd.read_parquet(mv.path / REFERENCE_FILE)

    # -- the champion pointer -------------------------------------------------------------------
    def champion(self) -> Champion | None:
        try:
            data = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return None
        return Champion(data["version"], data["promoted_at"], data["actor"], data["reason"],
                        tuple(data.get("lineage", ())), data.get("action", "promote"))

    def pointer_stamp(self) -> tuple[int, int] | None:
        """A cheap change detector for pollers: (mtime_ns, inode) of the pointer file."""
        return _stamp(self.pointer_path)

    def promote(self, version: str, actor: str, reason: str) -> Champion:
        with self._lock():  # checked under the lock, so prune cannot delete it in between
            self.load(version)  # a canary load: checksums, external data, onnxruntime session, a warm-up run
            current = self.champion()
            if current and current.version == version:
                return current
            lineage = (*current.lineage, current.version) if current else ()
            return self._write_pointer("promote", version, actor, reason, lineage)

    def rollback(self, actor: str, reason: str, *, expect: Champion | None = None) -> Champion:
        """Point back at the champion's predecessor (the last of its lineage). With ``expect``, only
        if the champion is still that one (the same pointer write): raises :class:`RegistryError`
        if it moved on meanwhile, so a rollback decided on old evidence never undoes a newer change."""
        with self._lock():
            current = self.champion()
            if expect is not None and (current is None or (current.version, current.promoted_at)
                                       != (expect.version, expect.promoted_at)):
                now = "none" if current is None else f"{current.version} ({current.action} {current.promoted_at})"
                raise RegistryError(f"the champion moved on: expected {expect.version} "
                                    f"(promoted {expect.promoted_at}), found {now}; not rolled back")
            if current is None or not current.lineage:
                raise RegistryError("nothing to roll back to: the champion has no predecessor")
            target = current.lineage[-1]
            self.load(target)  # the predecessor must still load, or the rollback would serve nothing
            return self._write_pointer("rollback", target, actor, reason, current.lineage[:-1])

    # -- the shadow pointer ---------------------------------------------------------------------
    def shadow(self) -> Shadow | None:
        """The version scored beside the champion (a candidate or a watch), or None."""
        try:
            data = json.loads(self.shadow_path.read_text())
        except FileNotFoundError:
            return None
        return Shadow(data["version"], data["set_at"], data["actor"], data["reason"],
                      ShadowRole(data.get("role", ShadowRole.CANDIDATE)))

    def candidate(self) -> Shadow | None:
        """The shadow if it is a candidate waiting for its verdict (not a promotion's watch), else None."""
        shadow = self.shadow()
        return shadow if shadow is not None and shadow.role == ShadowRole.CANDIDATE else None

    def shadow_stamp(self) -> tuple[int, int] | None:
        """A cheap change detector for pollers: (mtime_ns, inode) of the shadow pointer file."""
        return _stamp(self.shadow_path)

    def set_shadow(self, version: str, actor: str, reason: str, *,
                   role: ShadowRole = ShadowRole.CANDIDATE) -> Shadow:
        """Make ``version`` the shadow in ``role`` (replacing any other); its checksums are verified
        first and the champion is refused. Setting the current shadow again in the same role changes
        nothing."""
        role = ShadowRole(role)
        with self._lock():  # checked under the lock, so prune cannot delete it in between
            self.load(version)  # a canary load: an artifact that cannot run is never scored
            champion = self.champion()
            if champion is not None and champion.version == version:
                raise RegistryError(f"{version} is the champion; a shadow is a candidate scored beside it")
            current = self.shadow()
            if current is not None and (current.version, current.role) == (version, role):
                return current
            shadow = Shadow(version, _now(), actor, reason, role)
            _replace_json(self.shadow_path, {"version": version, "set_at": shadow.set_at, "actor": actor,
                                             "reason": reason, "role": str(role)})
            self._append({"action": "shadow_set", "version": version, "actor": actor, "reason": reason,
                          "role": str(role), "at": shadow.set_at})
            return shadow

    def clear_shadow(self, actor: str, reason: str) -> Shadow | None:
        """Stop scoring the shadow; returns the one cleared (None, and nothing written, if none)."""
        with self._lock():
            return self._clear_shadow(actor, reason)

    def _clear_shadow(self, actor: str, reason: str) -> Shadow | None:
        current = self.shadow()
        if current is None:
            return None
        self.shadow_path.unlink()
        self._append({"action": "shadow_clear", "version": current.version, "actor": actor, "reason": reason,
                      "role": str(current.role), "at": _now()})
        return current

    # -- retention ------------------------------------------------------------------------------
    def retention_plan(self, keep_ancestors: int, keep_candidates: int) -> RetentionPlan:
        """Which versions :meth:`prune` would keep and delete.

        Kept: the champion; the shadow; the versions among the ``keep_ancestors`` most recent
        entries of its lineage (so that many rollbacks still work); the ``keep_candidates`` most
        recent versions that are neither the champion nor in its lineage (nor the shadow).
        Everything else goes.
        """
        if keep_ancestors < 0 or keep_candidates < 0:
            raise RegistryError(f"keep counts must be >= 0, got keep_ancestors={keep_ancestors}, "
                                f"keep_candidates={keep_candidates}")
        champion = self.champion()
        if champion is None:
            raise RegistryError(f"{self.project!r} has no champion; refusing to prune")
        shadow = self.shadow()
        versions = [mv.version for mv in self.versions()]  # oldest first
        named = {champion.version, *([shadow.version] if shadow else [])}
        if named - set(versions):  # a pointer edited by hand, or written by an older driftloop
            raise RegistryError(f"the pointers name {sorted(named - set(versions))}, which are not registered "
                                f"versions of {self.project!r} ({versions}); refusing to prune")
        ancestors = set(champion.lineage[-keep_ancestors:]) if keep_ancestors else set()
        special = {champion.version, *champion.lineage, *([shadow.version] if shadow else [])}
        candidates = [v for v in versions if v not in special]
        newest = set(candidates[::-1][:keep_candidates])
        keep: dict[str, str] = {}
        delete: dict[str, str] = {}
        for v in versions:
            if v == champion.version:
                keep[v] = "champion"
            elif shadow is not None and v == shadow.version:
                keep[v] = "shadow, scored beside the champion"
            elif v in ancestors:
                keep[v] = f"earlier champion, within the {keep_ancestors} most recent of the lineage"
            elif v in champion.lineage:
                delete[v] = f"earlier champion beyond the {keep_ancestors} most recent of the lineage"
            elif v in newest:
                keep[v] = f"candidate, among the {keep_candidates} most recent"
            else:
                delete[v] = f"candidate beyond the {keep_candidates} most recent"
        return RetentionPlan(keep, delete)

    def prune(self, keep_ancestors: int, keep_candidates: int, dry_run: bool = False, *,
              actor: str = "driftloop", reason: str = "prune") -> list[str]:
        """Delete what :meth:`retention_plan` does not keep; returns those versions (oldest first).

        With ``dry_run`` nothing is deleted. Each deletion is appended to the history.
        """
        with self._lock():
            plan = self.retention_plan(keep_ancestors, keep_candidates)
            if dry_run or not plan.delete:
                return list(plan.delete)
            self._last_version_path.write_text(f"{self._high_water()}\n")  # never reuse a pruned number
            done: list[str] = []
            for version, why in plan.delete.items():
                try:
                    store_api.delete_model(self._store, f"{self.project}:{version}")
                except Exception as exc:
                    raise RegistryError(f"could not delete {self.project}:{version}: {exc}; "
                                        f"deleted before it: {done}") from exc
                done.append(version)
                self._append({"action": "delete", "version": version, "actor": actor,
                              "reason": f"{reason}: {why}", "at": _now()})
        return done

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line]

    def _write_pointer(self, action: str, version: str, actor: str, reason: str,
                       lineage: tuple[str, ...]) -> Champion:
        """Point at a new champion (under the lock); if it was the shadow, clear that pointer too."""
        shadow = self.shadow()  # read first: an unreadable pointer stops the change before any write
        champion = Champion(version, _now(), actor, reason, lineage, action)
        record = {"version": version, "promoted_at": champion.promoted_at, "actor": actor,
                  "reason": reason, "lineage": list(lineage), "action": action}
        _replace_json(self.pointer_path, record)
        self._append({"action": action} | record)
        if shadow is not None and shadow.version == version:
            self._clear_shadow(actor, f"became champion ({action}): {reason}")
        return champion

    def append_history(self, action: str, version: str, actor: str, reason: str) -> None:
        """Append one audit record: ``action``, ``version``, ``actor``, ``reason`` and ``at``."""
        with self._lock():
            self._append({"action": action, "version": version, "actor": actor, "reason": reason, "at": _now()})

    def _append(self, record: dict[str, Any]) -> None:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        with open(self.project_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
