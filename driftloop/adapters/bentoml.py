"""BentoML's private API, in one place.

Private names: ``bentoml._internal.models.model.ModelStore`` and the ``_model_store=`` keyword
of ``bentoml.models.list / get / create / delete``.
Why: the registry keeps each project's versions in a model store rooted at a path of its own
(``registry.home``), the store ``BENTOML_HOME`` would give, without setting ``BENTOML_HOME``
for the whole process (the service, tests and the monitor each open their own registry home).
BentoML exposes only the global store publicly; ``ModelStore(path)`` plus ``_model_store=`` is
how its own code reaches a store at a path.
Pinned: bentoml >=1.4.39,<1.5 (pyproject.toml).
Contract test: tests/unit/test_adapters.py::test_bentoml_model_store_at_a_path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["create_model", "delete_model", "get_model", "list_models", "model_store"]


def model_store(root: str | Path) -> Any:
    """A BentoML model store rooted at ``root`` (what ``$BENTOML_HOME/models`` would be)."""
    from bentoml._internal.models.model import ModelStore

    return ModelStore(Path(root))


def list_models(store: Any, name: str) -> list[Any]:
    """The models named ``name`` in ``store``; raises (BentoML's ``NotFound``) if there are none."""
    import bentoml

    return bentoml.models.list(name, _model_store=store)


def get_model(store: Any, tag: str) -> Any:
    import bentoml

    return bentoml.models.get(tag, _model_store=store)


def create_model(store: Any, tag: str, *, metadata: dict[str, Any], labels: dict[str, str], module: str) -> Any:
    """``bentoml.models.create`` into ``store``: a context manager giving the model being written."""
    import bentoml

    return bentoml.models.create(tag, metadata=metadata, labels=labels, module=module, _model_store=store)


def delete_model(store: Any, tag: str) -> None:
    import bentoml

    bentoml.models.delete(tag, _model_store=store)
