"""onnx's private API, in one place.

Private name: ``onnx.external_data_helper._get_all_tensors``.
Why: before a graph is loaded, every tensor that keeps its data in an external file must be
checked (its ``location`` stays inside the model's directory; see
``models/onnx_model.py:check_external_data``). The initializers of the main graph are public,
but those of subgraphs (``If``/``Loop`` bodies) and tensor-valued attributes are reached only by
this helper, which onnx itself uses to load and save external data.
Pinned: onnx >=1.23,<1.24 (pyproject.toml).
Contract test: tests/unit/test_adapters.py::test_onnx_all_tensors_includes_external_data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["all_tensors"]


def all_tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of ``model`` (an ``onnx.ModelProto``): initializers of the graph and
    of its subgraphs, and tensor attributes; external-data ones included, none of their data read."""
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)
