"""The model registry: versions on BentoML's model store, plus the champion pointer.

A version is a BentoML model ``<project>:v<N>`` whose directory holds ``model.onnx`` and
``reference.parquet`` (the drift baseline), with driftloop's metadata (schema, metrics,
lineage, sha256 of every file, ...) in BentoML's own ``model.yaml``.

The champion pointer is ``<home>/driftloop/<project>/champion.json``: a small file replaced
atomically (write, fsync, rename) under a file lock, so every serving worker can poll it cheaply
and never reads half a promotion. Every promotion and rollback is appended, with who and why,
to ``history.jsonl`` beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from models.errors import IntegrityError, RegistryError
from models.onnx_model import OnnxModel
from models.schema import FeatureSchema

MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.parquet"
TRIGGERS = ("initial", "manual", "drift", "decay", "schedule")
_VERSION = re.compile(r"^v(\d+)$")


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Registry:
    """Versions and champion of one project in a BentoML model store rooted at ``home``."""

    def __init__(self, home: str | Path, project: str) -> None:
        from bentoml._internal.models.model import ModelStore  # the store BENTOML_HOME would give

        self.home = Path(home)
        self.project = project
        self._store = ModelStore(self.home / "models")
        self._dir = self.home / "driftloop" / project
        self.pointer_path = self._dir / "champion.json"
        self.history_path = self._dir / "history.jsonl"

    # -- versions -------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        """Every version of the project, oldest first."""
        import bentoml

        try:
            items = bentoml.models.list(self.project, _model_store=self._store)
        except Exception:  # the project has no models yet
            return []
        out = [self._version_of(m) for m in items if _VERSION.match(m.tag.version or "")]
        return sorted(out, key=lambda v: int(v.version[1:]))

    def get(self, version: str) -> ModelVersion:
        import bentoml

        try:
            return self._version_of(bentoml.models.get(f"{self.project}:{version}", _model_store=self._store))
        except Exception:
            known = [v.version for v in self.versions()]
            raise RegistryError(f"unknown version {version!r} of {self.project!r}; known: {known}") from None

    def _version_of(self, model: Any) -> ModelVersion:
        meta = json.loads(model.info.metadata.get("driftloop", "{}"))
        return ModelVersion(self.project, model.tag.version, Path(model.path), model.info.creation_time, meta)

    def register(self, onnx_bytes: bytes, schema: FeatureSchema, reference: pd.DataFrame,
                 metadata: dict[str, Any], trigger: str, parent: str | None) -> ModelVersion:
        """Store a new version; returns it. The champion is not changed."""
        import bentoml

        if trigger not in TRIGGERS:
            raise RegistryError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
        ref = io.BytesIO()
        reference[schema.names].reset_index(drop=True).to_parquet(ref, index=False)
        files = {MODEL_FILE: onnx_bytes, REFERENCE_FILE: ref.getvalue()}
        meta = dict(metadata) | {
            "schema": schema.to_dict(),
            "trigger": trigger,
            "parent": parent,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        with self._lock():
            existing = [int(v.version[1:]) for v in self.versions()]
            version = f"v{max(existing, default=0) + 1}"
            # One JSON string: BentoML's metadata refuses None and would coerce types.
            with bentoml.models.create(f"{self.project}:{version}", metadata={"driftloop": json.dumps(meta)},
                                       labels={"trigger": trigger, "task": schema.task},
                                       module="driftloop", _model_store=self._store) as model:
                for name, data in files.items():
                    with open(model.path_of(name), "wb") as fh:
                        fh.write(data)
        return self.get(version)

    # -- loading (always verified) ---------------------------------------------------------------
    def verify(self, version: str) -> ModelVersion:
        """Check every file's sha256 against the metadata; raises :class:`IntegrityError`."""
        mv = self.get(version)
        expected = mv.metadata.get("sha256") or {}
        if MODEL_FILE not in expected:
            raise IntegrityError(f"{mv.tag}: metadata lists no checksum for {MODEL_FILE}; refusing to load it")
        for name, digest in expected.items():
            path = mv.path / name
            if not path.is_file():
                raise IntegrityError(f"{mv.tag}: {name} is missing")
            actual = sha256_file(path)
            if actual != digest:
                raise IntegrityError(f"{mv.tag}: {name} checksum mismatch (expected {digest[:12]}..., "
                                     f"found {actual[:12]}...); the file was changed or truncated")
        return mv

    def load(self, version: str, providers: list[str] | None = None) -> OnnxModel:
        """The verified version as a ready ONNX model (a warm-up prediction has run)."""
        mv = self.verify(version)
        onnx_bytes = (mv.path / MODEL_FILE).read_bytes()
        if hashlib.sha256(onnx_bytes).hexdigest() != mv.metadata["sha256"][MODEL_FILE]:
            raise IntegrityError(f"{mv.tag}: {MODEL_FILE} changed while it was being loaded")
        model = OnnxModel.from_bytes(version, mv.schema, onnx_bytes, mv.metadata, providers=providers)
        model.warm_up(self.reference(version).head(1))
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
                        tuple(data.get("lineage", ())))

    def pointer_stamp(self) -> tuple[int, int] | None:
        """A cheap change detector for pollers: (mtime_ns, inode) of the pointer file."""
        try:
            st = os.stat(self.pointer_path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def promote(self, version: str, actor: str, reason: str) -> Champion:
        self.verify(version)  # a broken artifact never becomes champion
        with self._lock():
            current = self.champion()
            if current and current.version == version:
                return current
            lineage = (*current.lineage, current.version) if current else ()
            return self._write_pointer("promote", version, actor, reason, lineage)

    def rollback(self, actor: str, reason: str) -> Champion:
        with self._lock():
            current = self.champion()
            if current is None or not current.lineage:
                raise RegistryError("nothing to roll back to: the champion has no predecessor")
            target = current.lineage[-1]
            self.verify(target)
            return self._write_pointer("rollback", target, actor, reason, current.lineage[:-1])

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line]

    def _write_pointer(self, action: str, version: str, actor: str, reason: str,
                       lineage: tuple[str, ...]) -> Champion:
        champion = Champion(version, _now(), actor, reason, lineage)
        record = {"version": version, "promoted_at": champion.promoted_at, "actor": actor,
                  "reason": reason, "lineage": list(lineage)}
        tmp = self.pointer_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.pointer_path)
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps({"action": action} | record) + "\n")
        return champion

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True)
        with open(self._dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
