"""Evidently's private API, in one place.

Pinned: evidently >=0.7.23,<0.8 (pyproject.toml). Evidently 0.7 keeps its statistical tests, drift
options and embedding methods in ``evidently.legacy`` (no public home in 0.7), and its local
workspace has no public way to open the file store without loading every snapshot.

Private names touched, and why:

- ``evidently.legacy.calculations.stattests.registry.get_registered_stattest`` and
  ``_registered_stat_tests``: a method name from the config -> Evidently's ``StatTest`` (its
  ``ValueError`` lists the valid names); a name -> its display name (the preset reports a
  default method by display name, a configured one by name).
- ``evidently.legacy.calculations.stattests`` (``ks_stat_test``, ``wasserstein_stat_test``,
  ``jensenshannon_stat_test``, ``chi_stat_test``, ``z_stat_test``): the tests Evidently's
  ``_get_default_stattest`` picks, called one per column by ``monitoring/drift.py``.
- ``evidently.legacy.core.ColumnType`` and ``evidently.legacy.options.data_drift.DataDriftOptions``:
  a column's type, and the per-column method/threshold resolution the preset itself uses.
- ``evidently.legacy.metrics.data_drift.embedding_drift_methods``: the embeddings drift methods
  (``model``, ``ratio``, ``distance``, ``mmd``) that ``EmbeddingsDrift`` calls.
- ``evidently.legacy.core.new_id``, ``evidently.legacy.utils.NumpyEncoder``,
  ``evidently.ui.storage.local.base.LocalState``, and ``Workspace``'s ``_add_run`` /
  ``_get_snapshot_url``, on a ``Workspace`` subclass that skips ``Workspace.__init__``
  (:func:`local_workspace_class`): see ``monitoring/workspace.py``'s design notes.

Contract tests: tests/unit/test_adapters.py::test_evidently_stattest_registry_and_options,
::test_evidently_embedding_methods, ::test_evidently_local_workspace.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["column_type", "default_stattests", "drift_options", "embedding_drift_methods",
           "local_workspace_class", "no_telemetry", "registered_stattest", "stattest_display_name"]


def no_telemetry() -> None:
    """Evidently's telemetry: never phone home (before the first evidently import)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")


def column_type(kind: str) -> Any:
    """Evidently's ``ColumnType`` for ``"num"`` or ``"cat"``."""
    no_telemetry()
    from evidently.legacy.core import ColumnType

    return ColumnType(kind)


def drift_options(**options: Any) -> Any:
    """Evidently's ``DataDriftOptions`` (``get_feature_stattest_func``, ``get_threshold``)."""
    no_telemetry()
    from evidently.legacy.options.data_drift import DataDriftOptions

    return DataDriftOptions(**options)


def registered_stattest(method: Any, kind: str) -> Any:
    """Evidently's ``StatTest`` for a configured method (a name or a StatTest) and column kind;
    ``ValueError`` naming the available ones for an unknown name."""
    no_telemetry()
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    return get_registered_stattest(method, column_type(kind))


def stattest_display_name(name: str) -> str | None:
    """The display name of the registered test ``name`` (``"ks"`` -> ``"K-S p_value"``), or
    ``None`` if no test has that name."""
    no_telemetry()
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    by_type = _registered_stat_tests.get(name)
    return next(iter(by_type.values())).display_name if by_type else None


def default_stattests() -> SimpleNamespace:
    """The tests Evidently's ``_get_default_stattest`` chooses among: ``ks``, ``wasserstein``,
    ``jensenshannon``, ``chi``, ``z``."""
    no_telemetry()
    from evidently.legacy.calculations import stattests as st

    return SimpleNamespace(ks=st.ks_stat_test, wasserstein=st.wasserstein_stat_test,
                           jensenshannon=st.jensenshannon_stat_test, chi=st.chi_stat_test, z=st.z_stat_test)


def embedding_drift_methods() -> Any:
    """Evidently's embeddings drift methods module: ``model``, ``ratio``, ``distance``, ``mmd``."""
    no_telemetry()
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as methods

    return methods


@functools.cache
def local_workspace_class() -> type:
    """Evidently's local ``Workspace`` on its ``LocalState`` file store alone: the same files and
    methods, without the managers that parse every snapshot at construction
    (``Workspace.__init__`` is deliberately not called). ``add_run`` writes a snapshot file whole
    or not at all: serialised first, written beside its final name, hard-linked into place."""
    no_telemetry()
    from evidently.legacy.core import new_id
    from evidently.legacy.utils import NumpyEncoder
    from evidently.ui.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    class LocalWorkspace(Workspace):  # type: ignore[misc]
        def __init__(self, path: str) -> None:  # Workspace.__init__ deliberately not called
            self.path = path
            self.state = LocalState(path)

        def _add_run(self, project_id: Any, snapshot: Any) -> Any:
            """``LocalState.write_snapshot``'s file, whole or not at all."""
            snapshot_id = new_id()
            text = json.dumps(snapshot.to_snapshot_model().dict(), cls=NumpyEncoder)  # before touching the disk
            final = Path(self._get_snapshot_url(project_id, snapshot_id))
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(f".{final.name}.partial")
            partial.write_text(text, encoding="utf-8")
            try:
                os.link(partial, final)
            finally:
                partial.unlink()
            return snapshot_id

    return LocalWorkspace
