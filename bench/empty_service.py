"""The floor under the driftloop service's start-up and memory: a BentoML service with nothing in it.

One worker that imports numpy and onnxruntime (what any ONNX server needs) and answers
``POST /predict`` with the number of rows it was sent; no model, no store, no settings.
:mod:`bench.footprint` starts it with ``bentoml serve bench.empty_service:Empty``.
"""

from __future__ import annotations

from typing import Any

import bentoml


@bentoml.service(name="empty", workers=1)
class Empty:
    def __init__(self) -> None:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401

    @bentoml.api
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        return {"rows": len(rows)}
