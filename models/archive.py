"""Moving a version between registries: one ``.tar.gz`` or ``.zip`` file.

An archive holds regular files at its top level, and only these::

    manifest.json      format, origin (project, version, created_at, exported_at), the full
                       driftloop metadata, and each file's size and sha256
    model.onnx
    reference.parquet
    <name>             the graph's external-data files, if it keeps weights beside it (plain
                       names, each listed in the manifest with its checksum)

Import trusts nothing in it. It is read into memory, never extracted: any member that is not a
plain top-level name (a path with ``..``, an absolute path, a directory), a symlink, hard link or
device, a duplicate, an oversized member, an encrypted one or one the manifest does not list
refuses the whole archive. Every checksum and size is compared with the manifest (and with the
metadata's own checksums) before anything is registered. The graph must then load and run on the
reference sample, from a private temporary directory holding only the graph and its listed
external-data files: a tensor whose external data names any other file (``location: "passwd"``,
which onnxruntime would read from the importer's working directory) is refused. Only JSON,
Parquet and ONNX are parsed: nothing is unpickled (BentoML's own import would unpickle custom
objects, so it is not used). Checksums catch corruption and careless edits; they are not a
signature: whoever can rewrite the manifest can rewrite the checksums too.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.errors import DriftloopError, IntegrityError, RegistryError
from driftloop.models.files import replace_atomically
from driftloop.models.onnx_model import OnnxModel, check_external_data
from driftloop.models.registry import EXTERNAL_NAME, MODEL_FILE, REFERENCE_FILE, RESERVED_NAMES, ModelVersion
from driftloop.models.schema import FeatureSchema
from driftloop.vocabulary import Trigger

if TYPE_CHECKING:
    from driftloop.models.registry import Registry

FORMAT = "driftloop-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = (MODEL_FILE, REFERENCE_FILE)  # every archive's; external-data files besides, if the graph has any
MEMBERS = frozenset((MANIFEST, *FILES))
MAX_MEMBERS = len(MEMBERS) + 64
MAX_MEMBER_BYTES = 2 << 30  # 2 GiB: read into memory, so bounded
MAX_TOTAL_BYTES = 4 << 30  # ...and all of them together
MAX_MANIFEST_BYTES = 16 << 20
SUFFIXES = {".tar.gz": "tar", ".tgz": "tar", ".zip": "zip"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REGISTERED_KEYS = ("schema", "trigger", "parent", "sha256")  # register() writes these itself


def archive_kind(path: Path) -> str:
    """``"tar"`` (``.tar.gz``, ``.tgz``) or ``"zip"`` from the file name."""
    name = path.name.lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise RegistryError(f"{path}: the archive name must end with one of {', '.join(SUFFIXES)}")


# -- export ------------------------------------------------------------------------------------
def export_version(registry: Registry, version: str, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``version`` (verified first) to ``path``, atomically; returns ``path``."""
    kind = archive_kind(path)
    if path.exists() and not overwrite:
        raise RegistryError(f"{path} already exists; pass overwrite=True (--force) to replace it")
    mv = registry.verify(version)
    listed = mv.metadata.get("sha256") or {}
    data: dict[str, bytes] = {}
    for name in FILES:
        if name not in listed:
            raise IntegrityError(f"{mv.tag}: metadata lists no checksum for {name}; refusing to export it")
    for name in listed:  # the graph's external-data files too
        if name not in FILES and not _external_name(name):
            raise IntegrityError(f"{mv.tag}: metadata lists a checksum for {name!r}, which is not a file of a "
                                 "version; refusing to export it")
        try:
            data[name] = (mv.path / name).read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"{mv.tag}: {name} disappeared while it was being exported (pruned?)") from None
        if _sha256(data[name]) != listed[name]:  # what is archived is exactly what was verified
            raise IntegrityError(f"{mv.tag}: {name} changed while it was being exported")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "project": mv.project, "version": mv.version,
        "created_at": mv.created_at.isoformat(), "exported_at": _now(),
        "files": {name: {"sha256": listed[name], "size": len(blob)} for name, blob in data.items()},
        "metadata": mv.metadata,
    }
    members = {MANIFEST: json.dumps(manifest, indent=2, default=str).encode(), **data}
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            (_write_tar if kind == "tar" else _write_zip)(fh, members)

    return replace_atomically(path, write)


def _write_tar(fh: Any, members: dict[str, bytes]) -> None:
    mtime = int(datetime.now(timezone.utc).timestamp())
    with tarfile.open(fileobj=fh, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(blob), mtime, 0o644
            tar.addfile(info, io.BytesIO(blob))


def _write_zip(fh: Any, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            info = zipfile.ZipInfo(name, date_time=datetime.now().timetuple()[:6])
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, blob, compress_type=zipfile.ZIP_DEFLATED)


# -- import ------------------------------------------------------------------------------------
def import_version(registry: Registry, path: Path, actor: str) -> ModelVersion:
    """Verify every member of the archive at ``path``, then register it as the next version.

    The new version has trigger ``manual`` and no parent in this registry; its metadata is the
    original's plus ``imported_from`` (project, version, created_at, exported_at, trigger,
    parent and file checksums of the original, and who imported it when).
    """
    members = read_members(path)
    manifest = _manifest(path, members.pop(MANIFEST, None))
    files = manifest["files"]
    missing = sorted(set(files) - set(members))
    if missing:
        raise IntegrityError(f"{path}: {missing[0]} is listed in the manifest but not in the archive")
    unlisted = sorted(set(members) - set(files))
    if unlisted:
        raise IntegrityError(f"{path}: unexpected member {unlisted[0]!r}: the manifest lists no checksum for it "
                             f"(an archive holds {MANIFEST} and the files it lists)")
    for name in files:  # every checksum before anything is parsed or registered
        expected, blob = files[name], members[name]
        actual = _sha256(blob)
        if actual != expected["sha256"] or len(blob) != expected["size"]:
            raise IntegrityError(f"{path}: {name} checksum mismatch (expected {expected['sha256'][:12]}..., "
                                 f"found {actual[:12]}..., {len(blob)} bytes); the archive was changed or damaged")
    metadata = manifest["metadata"]
    recorded = metadata.get("sha256") or {}
    for name in sorted(set(files) | set(recorded)):
        if recorded.get(name) != files.get(name, {}).get("sha256"):
            raise IntegrityError(f"{path}: the manifest's checksum of {name} disagrees with the model's metadata")
    schema, reference = _contents(path, metadata, members)
    external = {name: members[name] for name in files if name not in FILES}
    _canary(path, manifest["version"], schema, members[MODEL_FILE], external, metadata, reference)

    origin = {"project": manifest["project"], "version": manifest["version"],
              "created_at": manifest.get("created_at"), "exported_at": manifest.get("exported_at"),
              "trigger": metadata.get("trigger"), "parent": metadata.get("parent"),
              "sha256": dict(recorded), "archive": path.name, "imported_by": actor, "imported_at": _now()}
    if "imported_from" in metadata:  # an import of an import keeps the earlier hop
        origin["earlier"] = metadata["imported_from"]
    kept = {k: v for k, v in metadata.items() if k not in _REGISTERED_KEYS} | {"imported_from": origin}
    mv = registry.register(members[MODEL_FILE], schema, reference, kept, trigger=Trigger.MANUAL, parent=None,
                           external=external)
    registry.append_history("import", mv.version, actor,
                            f"imported {manifest['project']}:{manifest['version']} from {path.name}")
    return mv


def _canary(path: Path, version: str, schema: FeatureSchema, graph: bytes, external: dict[str, bytes],
            metadata: dict[str, Any], reference: pd.DataFrame) -> None:
    """The graph must load, match the schema and run before it is registered: loaded from a private
    directory holding only it and its listed external-data files, so that onnxruntime can read no
    other file (given bytes, it would look for external data in the working directory)."""
    with tempfile.TemporaryDirectory(prefix="driftloop-import-") as tmp:
        where = Path(tmp)
        for name, blob in {MODEL_FILE: graph, **external}.items():
            (where / name).write_bytes(blob)
        try:
            named = check_external_data(graph, where, [MODEL_FILE, *external])
        except IntegrityError as exc:
            raise IntegrityError(f"{path}: {exc}") from None
        except DriftloopError as exc:  # not a readable graph
            raise RegistryError(f"{path}: the model in the archive cannot serve: {exc}") from exc
        try:
            model = OnnxModel.from_bytes(version, schema, graph, metadata, source=where / MODEL_FILE if named else None)
            model.warm_up(reference.head(1))
        except DriftloopError as exc:
            raise RegistryError(f"{path}: the model in the archive cannot serve: {exc}") from exc


def read_members(path: Path) -> dict[str, bytes]:
    """The archive's members by name, refusing anything but the expected regular files."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if magic[:2] == b"\x1f\x8b":
            return _read_tar(path)
        if magic == b"PK\x03\x04":
            return _read_zip(path)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable archive ({type(exc).__name__}: {exc})") from None
    raise IntegrityError(f"{path}: not a .tar.gz or .zip archive")


def _read_tar(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, mode="r:gz") as tar:
        for info in tar:  # streamed: a bad member stops the read before the next header
            total += info.size
            _check_member(path, info.name, seen=out, regular=info.isreg(), link=info.issym() or info.islnk(),
                          size=info.size, total=total)
            fh = tar.extractfile(info)
            if fh is None:  # unreachable: only regular files pass the check
                raise IntegrityError(f"{path}: member {info.name!r} is not a regular file")
            out[info.name] = _bounded_read(path, info.name, fh, info.size)
    return out


def _read_zip(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix file type if the writer recorded one
            total += info.file_size
            _check_member(path, info.filename, seen=out, size=info.file_size, link=kind == stat.S_IFLNK,
                          regular=not info.is_dir() and kind in (0, stat.S_IFREG), total=total)
            if info.flag_bits & 0x1:
                raise IntegrityError(f"{path}: member {info.filename!r} is encrypted")
            out[info.filename] = b""
        for info in infos:
            try:
                with zf.open(info) as fh:
                    out[info.filename] = _bounded_read(path, info.filename, fh, info.file_size)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # a CRC or inflate error
                raise IntegrityError(f"{path}: {info.filename} is damaged ({exc})") from None
    return out


def _check_member(path: Path, name: str, *, seen: dict[str, bytes], regular: bool, link: bool, size: int,
                  total: int) -> None:
    """Refuse ``name`` unless it is a regular file the archive may hold; ``total``: the declared
    sizes of the members so far, this one included (each read is held to its declared size)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise IntegrityError(f"{path}: member {name!r} has an absolute path")
    if ".." in parts:
        raise IntegrityError(f"{path}: member {name!r} points outside the archive (path traversal)")
    if link:
        raise IntegrityError(f"{path}: member {name!r} is a link; only regular files are accepted")
    if not regular:
        raise IntegrityError(f"{path}: member {name!r} is not a regular file")
    if name not in MEMBERS and not _external_name(name):
        raise IntegrityError(f"{path}: unexpected member {name!r}; an archive holds only {sorted(MEMBERS)} "
                             "and the graph's external-data files (plain names)")
    if name in seen:
        raise IntegrityError(f"{path}: member {name!r} appears twice")
    if len(seen) >= MAX_MEMBERS:
        raise IntegrityError(f"{path}: more than {MAX_MEMBERS} members")
    limit = MAX_MANIFEST_BYTES if name == MANIFEST else MAX_MEMBER_BYTES
    if size > limit:
        raise IntegrityError(f"{path}: member {name!r} is {size} bytes; at most {limit}")
    if total > MAX_TOTAL_BYTES:
        raise IntegrityError(f"{path}: the members add up to more than {MAX_TOTAL_BYTES} bytes")


def _external_name(name: str) -> bool:
    """Whether ``name`` can be a graph's external-data file (the registry stores it so)."""
    return bool(EXTERNAL_NAME.fullmatch(name)) and name not in RESERVED_NAMES


def _bounded_read(path: Path, name: str, fh: Any, size: int) -> bytes:
    blob = fh.read(size + 1)
    if len(blob) != size:
        raise IntegrityError(f"{path}: {name} is {len(blob)} bytes, its header says {size}")
    return blob


def _manifest(path: Path, blob: bytes | None) -> dict[str, Any]:
    if blob is None:
        raise IntegrityError(f"{path}: no {MANIFEST}; not an archive from driftloop models export")
    try:
        manifest = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RegistryError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    fmt = manifest.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT_VERSION:
        raise RegistryError(f"{path}: format_version {fmt!r} is not supported (this driftloop reads "
                            f"up to {FORMAT_VERSION}); upgrade driftloop")
    for key in ("project", "version"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise IntegrityError(f"{path}: {MANIFEST}: {key} must be a non-empty string")
    if not isinstance(manifest.get("metadata"), dict):
        raise IntegrityError(f"{path}: {MANIFEST}: metadata must be an object")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(FILES) <= set(files):
        raise IntegrityError(f"{path}: {MANIFEST}: files must list {list(FILES)} (and the graph's external-data "
                             "files, if any)")
    for name in set(files) - set(FILES):
        if not _external_name(name):
            raise IntegrityError(f"{path}: {MANIFEST}: files lists {name!r}, which cannot be an external-data "
                                 "file (a plain name other than the archive's own)")
    for name, entry in files.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])
              and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool))
        if not ok:
            raise IntegrityError(f"{path}: {MANIFEST}: files.{name} needs a sha256 (64 hex digits) and a size")
    return manifest


def _contents(path: Path, metadata: dict[str, Any], members: dict[str, bytes]) -> tuple[FeatureSchema, pd.DataFrame]:
    try:
        schema = FeatureSchema.from_dict(metadata["schema"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{path}: the metadata holds no usable feature schema ({exc!r})") from None
    try:
        reference = pd.read_parquet(io.BytesIO(members[REFERENCE_FILE]))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family
        raise IntegrityError(f"{path}: {REFERENCE_FILE} is not a readable Parquet file ({exc})") from None
    absent = [n for n in schema.names if n not in reference.columns]
    if absent or reference.empty:
        raise IntegrityError(f"{path}: {REFERENCE_FILE} lacks feature columns {absent} or rows")
    return schema, reference[schema.names]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
