"""The floor the driftloop service is measured against: Starlette + onnxruntime, nothing else.

    POST /predict   {"rows": [{feature: value, ...}, ...]}
                    -> {"model_version", "predictions", "probabilities" (classifiers)}
    GET  /readyz    200 once the model is loaded (503 before)

Same JSON contract as the service's ``/predict`` (less the request ids, which exist for the
prediction log this app does not keep), same graph file, same onnxruntime session options
(one intra-op and one inter-op thread, ``CPUExecutionProvider``: as
:func:`models.onnx_model.session`, rebuilt here so that scikit-learn is not imported), same
feeds (:meth:`models.schema.FeatureSchema.feeds`) and the same rounding of probabilities. What it
leaves out is everything else the service does: no validation of the rows beyond what building
the feeds needs (a missing feature or a bad value is a 400), no request ids, no prediction log, no
metrics, no tracing, no access log; the graph runs inline on the event loop.

Served by uvicorn (``bench.serving`` starts it)::

    BARE_APP_CONFIG=bare.json python -m uvicorn bench.bare_app:app --workers 1

``bare.json``: ``{"model_path", "sha256", "version", "schema"}`` (the schema as
:meth:`FeatureSchema.to_dict` writes it); the file's sha256 is checked before the model loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from driftloop.models.schema import SCORES_FIELD, FeatureSchema

CONFIG_ENV = "BARE_APP_CONFIG"


class BareModel:
    def __init__(self, model_path: str | Path, sha256: str, version: str, schema: dict[str, Any]) -> None:
        data = Path(model_path).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise RuntimeError(f"{model_path}: sha256 {actual[:12]}... does not match the expected {sha256[:12]}...")
        opts = ort.SessionOptions()  # as models.onnx_model.session(onnx_bytes, threads=1)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        self.schema = FeatureSchema.from_dict(schema)
        self.version = version
        self.scores_field = SCORES_FIELD[self.schema.task]
        self.names = self.schema.names
        self.outputs = [o.name for o in self.session.get_outputs() if o.name != "embedding"]  # as the service

    @classmethod
    def from_config(cls, path: str | Path) -> BareModel:
        cfg = json.loads(Path(path).read_text())
        return cls(cfg["model_path"], cfg["sha256"], cfg["version"], cfg["schema"])

    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        feeds = self.schema.feeds({name: [row[name] for row in rows] for name in self.names})
        outputs = self.session.run(self.outputs, feeds)
        answer: dict[str, Any] = {"model_version": self.version,
                                  "predictions": np.asarray(outputs[0]).reshape(-1).tolist()}
        if self.scores_field is not None and len(outputs) > 1:
            answer[self.scores_field] = np.round(np.asarray(outputs[1]).astype(np.float64), 6).tolist()
        return answer


class State:
    model: BareModel | None = None


async def predict(request: Request) -> JSONResponse:
    model = State.model
    if model is None:
        return JSONResponse({"error": "no model loaded"}, status_code=503)
    try:
        rows = (await request.json())["rows"]
        return JSONResponse(model.predict(rows))
    except (KeyError, TypeError, ValueError) as exc:  # the fast path checks nothing else
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=400)


async def readyz(request: Request) -> JSONResponse:
    model = State.model
    if model is None:
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True, "model_version": model.version, "pid": os.getpid()})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    model = BareModel.from_config(os.environ[CONFIG_ENV])
    model.predict([{f.name: _example(f) for f in model.schema.features}])  # warm-up, as the service does
    State.model = model
    yield
    State.model = None


def _example(feature: Any) -> Any:
    if feature.kind == "categorical":
        return feature.categories[0] if feature.categories else ""
    if feature.kind == "numeric":
        return feature.min if feature.min is not None else 0.0
    return np.zeros(feature.shape, dtype=np.float32).tolist()


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz, methods=["GET"])],
                lifespan=lifespan)
