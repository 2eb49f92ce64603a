"""A Bento's own model, and the checks ``bentoml serve`` makes before any worker starts.

The packed model. ``deploy/bento.py`` builds the Bento with one template argument (BentoML's
``args``, 1.4.8+): ``packed_model``, the registry tag of the champion it packs (``loans:v3``).
``bentoml build`` records it in ``bento.yaml``; ``bentoml serve`` of the Bento (by tag, by
directory, in its container) restores it in its own process and hands it to every worker, before
the service module is imported. :mod:`service.app` reads it (:data:`ARGS`) and declares the model
the BentoML way, ``BentoModel(ARGS.packed_model)``: BentoML lists it in the Bento, ships its files
with it (``bentoml export``, ``containerize``) and resolves it from the Bento's model store before
any worker starts. Outside a Bento (``driftloop serve``, ``bentoml serve
driftloop.service.app:Driftloop``, tests) there is no argument and no packed model.

A worker serves the packed model only while the registry of its settings names no champion
(none configured, none reachable at ``registry.home``): loaded like a champion, through
:meth:`~driftloop.models.registry.Registry.load` over the Bento's model store (every file against
the sha256 its metadata records, external data, a warm-up run). The pointer watcher keeps
looking, so a champion that appears there replaces it and the loop's hot swaps go on as usual.
Serving the packed model is read-only: promote and rollback answer 409.

Before the workers. :func:`preflight` runs in ``bentoml serve``'s own process (a
``@bentoml.on_deployment`` hook of the service), once, before the arbiter starts any worker: a
config file (``DRIFTLOOP_CONFIG``) that is missing or invalid, or a packed model whose files do
not match their checksums, is one line on stderr and a non-zero exit, instead of workers that
fail in ``__init__`` and are restarted forever. It also records the directory ``bentoml serve``
was started from (:data:`WORKDIR_ENV`): BentoML runs a Bento's workers in the Bento's own source
directory, where relative paths of the settings (``var/driftloop.db``) would land inside the
Bento store; the workers of a Bento move back to it (:func:`enter_workdir`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from driftloop.models.onnx_model import OnnxModel
    from driftloop.models.registry import Registry
    from driftloop.settings import Settings

CONFIG_ENV = "DRIFTLOOP_CONFIG"
# The directory `bentoml serve` was started from, for the workers (set by preflight).
WORKDIR_ENV = "DRIFTLOOP_SERVE_WORKDIR"


class BentoArgs(BaseModel):
    """The Bento's template arguments (``bentoml build``'s ``args``, ``bentoml serve --arg``)."""

    packed_model: str | None = None  # the registry tag the Bento packs; None outside a Bento


def config_path() -> str | None:
    """The settings file the service reads: ``DRIFTLOOP_CONFIG``, None (defaults and the
    environment) when unset or empty."""
    return os.environ.get(CONFIG_ENV) or None


def load_config() -> Settings:
    """The service's settings; any failure is a :class:`~driftloop.models.errors.ConfigError`
    naming the file (a YAML syntax error, a file that is not a mapping, included)."""
    from driftloop.models.errors import ConfigError
    from driftloop.settings import load_settings

    path = config_path()
    try:
        return load_settings(path)
    except ConfigError:
        raise
    except Exception as exc:  # the YAML parser's errors, a list where a mapping belongs, an unreadable file
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {type(exc).__name__}: {exc}") from None


def one_line(message: str) -> str:
    """A (multi-line) error message as one line: its lines joined by ``; `` after the first."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    return f"{head} {'; '.join(rest)}" if head.endswith(":") and rest else "; ".join(lines)


def packed_registry(stored: Any) -> Registry:
    """The BentoML model store that holds ``stored`` (a resolved ``BentoModel``: the Bento's own
    ``models/`` in a container, ``$BENTOML_HOME/models`` otherwise), read as a registry: its
    versions and their verified loading only (no pointer of it is ever read or written)."""
    from driftloop.models.errors import IntegrityError
    from driftloop.models.registry import Registry

    path = Path(stored.path)  # <store>/<name>/<version>, BentoML's layout
    store = path.parent.parent
    if store.name != "models" or path.name != stored.tag.version or path.parent.name != stored.tag.name:
        raise IntegrityError(f"packed model {stored.tag}: {path} is not <home>/models/<name>/<version>")
    return Registry(store.parent, stored.tag.name)


def verify_packed(stored: Any) -> None:
    """Check every file of the packed model against the sha256 in its metadata
    (:class:`~driftloop.models.errors.IntegrityError` if one differs or is missing)."""
    packed_registry(stored).verify(stored.tag.version)


def load_packed(stored: Any, providers: list[str] | None = None) -> OnnxModel:
    """The packed model, verified and warmed up (:meth:`Registry.load`)."""
    return packed_registry(stored).load(stored.tag.version, providers=providers)


def preflight(packed: Any | None) -> None:
    """What would make every worker fail, checked once in ``bentoml serve``'s own process before
    any worker starts (``packed``: the service's ``BentoModel``, or None): raises ``SystemExit``
    with one line (so the server exits non-zero) for a config that cannot be loaded or a packed
    model that fails its checksums. Records the working directory for the workers."""
    from driftloop.models.errors import ConfigError, DriftloopError

    try:
        load_config()
    except ConfigError as exc:
        path = config_path()
        named = "" if path is None else f" ({CONFIG_ENV})" if Path(path).is_absolute() else \
            f" ({CONFIG_ENV}, relative to {os.getcwd()})"
        raise SystemExit(f"driftloop: {one_line(str(exc))}{named}") from None
    if packed is not None:
        try:
            verify_packed(packed.resolve())
        except DriftloopError as exc:
            raise SystemExit(f"driftloop: refusing the Bento's packed model: {one_line(str(exc))}") from None
    os.environ.setdefault(WORKDIR_ENV, os.getcwd())


def enter_workdir() -> None:
    """In a worker of a Bento: work in the directory ``bentoml serve`` was started from (see the
    module's docstring), so relative paths mean what they mean to ``driftloop serve``."""
    workdir = os.environ.get(WORKDIR_ENV)
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)
