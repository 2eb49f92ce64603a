"""The OpenAPI document of the served project, built from the model's feature schema.

BentoML writes the document from the ``@bentoml.api`` signatures when the service is defined,
before any model is loaded: there ``/predict`` takes rows of any object. The schema is known once
a worker has loaded its champion, so ``GET /docs.json`` (a route of :mod:`service.app`) takes
BentoML's document and hands it to :func:`served_spec`, which describes:

- the ``/predict`` rows: one property per feature (numeric: a number, with its training range
  and median; categorical: a string, its categories; image and sequence: nested arrays of their
  shape), all required, nothing else, at most ``serving.max_rows`` rows, and an example row made
  of the training medians, first categories and arrays of zeros;
- the ``/predict`` answer: only the scores field of the model's task (probabilities, distances,
  anomaly scores), with the class labels;
- ``GET /model`` and ``GET /history``, which are Starlette routes BentoML does not document.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from driftloop.models.schema import FeatureSchema, example_row  # noqa: F401 (the document's example; tests import it here)
from driftloop.service.serving import scores_field

if TYPE_CHECKING:
    from driftloop.settings import ServingConfig

ROW = "Row"  # the component that describes one /predict row
SCORE_FIELDS = ("probabilities", "distances", "anomaly_scores")
HISTORY_KINDS = ("checks", "events")  # what GET /history serves
ERROR = {"type": "object", "required": ["error", "field"],
         "properties": {"error": {"type": "string"}, "field": {"type": "string", "nullable": True}}}


def row_schema(schema: FeatureSchema, config: ServingConfig) -> dict[str, Any]:
    """One /predict row as a JSON schema, under the serving input policies."""
    properties: dict[str, Any] = {}
    for feat in schema.features:
        if feat.kind == "numeric":
            prop: dict[str, Any] = {"type": "number", "description": f"numeric; in training from {_num(feat.min)} "
                                                                     f"to {_num(feat.max)}, median {_num(feat.fill)}"}
            if config.missing_values == "impute":
                prop["nullable"] = True
                prop["description"] += " (null: the median is used)"
        elif feat.kind == "categorical":
            known = list(feat.categories)
            prop = {"type": "string", "description": f"categorical; seen in training: {known}"}
            if config.unknown_category == "reject" and known:
                prop["enum"] = known
            else:
                prop["description"] += " (others are accepted as none of them)"
        else:  # image (height, width) or sequence (steps, channels): nested arrays of numbers
            prop = _nested_array(feat.shape)
            what = "height x width" if feat.kind == "image" else "steps x channels"
            prop["description"] = (f"{feat.kind}: {' x '.join(map(str, feat.shape))} ({what}) numbers, "
                                   f"in training from {_num(feat.min)} to {_num(feat.max)}")
        properties[feat.name] = prop
    return {"type": "object", "title": ROW, "properties": properties, "required": list(schema.names),
            "additionalProperties": False}


def served_spec(base: dict[str, Any], schema: FeatureSchema | None, config: ServingConfig,
                project: str | None = None) -> dict[str, Any]:
    """``base`` (BentoML's document, left as it is) with the served project's /predict and the
    info routes; ``schema`` None (no model loaded yet): /predict's rows stay generic objects."""
    spec = copy.deepcopy(base)
    spec.setdefault("paths", {}).update(info_paths())
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    predict = spec["paths"].get("/predict", {}).get("post")
    if predict is None:
        return spec
    rows = _resolve(spec, predict["requestBody"]["content"]["application/json"]["schema"])["properties"]["rows"]
    rows.pop("examples", None)
    rows.update(type="array", minItems=1, maxItems=config.max_rows)
    if schema is None:
        return spec
    spec["components"]["schemas"][ROW] = row_schema(schema, config)
    rows["items"] = {"$ref": f"#/components/schemas/{ROW}"}
    rows["example"] = [example_row(schema)]
    rows["description"] = (f"rows of the {project or 'served'} project's features "
                           f"({schema.task}: {', '.join(schema.names[:20])}{' ...' if len(schema.names) > 20 else ''})")
    ok = predict["responses"].get(200) or predict["responses"].get("200")
    if ok is not None:
        answer = _resolve(spec, ok["content"]["application/json"]["schema"])
        keep = scores_field(schema.task)
        for name in SCORE_FIELDS:
            if name != keep:
                answer["properties"].pop(name, None)
        if keep == "probabilities" and schema.labels:
            answer["properties"][keep]["description"] = f"per class, in the order {list(schema.labels)}"
    return spec


def info_paths() -> dict[str, Any]:
    """``GET /model`` and ``GET /history`` as OpenAPI path items."""
    def answer(description: str, content: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": content}}}

    error_ref = {"$ref": "#/components/schemas/Error"}
    model = {"type": "object", "required": ["model_version", "task", "schema"], "properties": {
        "model_version": {"type": "string"}, "project": {"type": "string"}, "kind": {"type": "string"},
        "task": {"type": "string"}, "trigger": {"type": "string", "nullable": True},
        "parent": {"type": "string", "nullable": True}, "metrics": {"type": "object"},
        "schema": {"type": "object", "description": "the feature schema: task, target, labels, features"},
        "providers": {"type": "array", "items": {"type": "string"}}, "device": {"type": "string"},
        "batching": {"type": "boolean"}, "worker_pid": {"type": "integer"},
        "source": {"type": "string", "enum": ["registry", "bento"],
                   "description": "registry: the champion pointer's version; bento: the model the Bento packs, "
                                  "served while no registry names a champion"},
        "shadow": {"type": "object", "nullable": True,
                   "description": "the shadow version, its role (candidate | watch) and whether this worker "
                                  "scores the prediction log with it"},
    }}
    history = {"type": "object", "description": "one key, the kind asked for",
               "properties": {kind: {"type": "array", "items": {"type": "object"}} for kind in HISTORY_KINDS}}
    return {
        "/model": {"get": {
            "tags": ["Service APIs"], "operationId": "driftloop__model",
            "description": "The serving model version, its metrics and feature schema, and the shadow.",
            "responses": {"200": answer("the model this worker serves", model),
                          "503": answer("no model is loaded yet (Retry-After)", error_ref)},
        }},
        "/history": {"get": {
            "tags": ["Service APIs"], "operationId": "driftloop__history",
            "description": "The monitor's decisions with their evidence: checks (one per window) or events "
                           "(the audit trail), the newest `limit`, oldest first.",
            "parameters": [
                {"name": "kind", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(HISTORY_KINDS), "default": "checks"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
            ],
            "responses": {"200": answer("the records", history),
                          "422": answer("a parameter is wrong: the error names it", error_ref)},
        }},
    }


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.6g}"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema, or the component its ``$ref`` names (the object to patch either way)."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _nested_array(shape: tuple[int, ...]) -> dict[str, Any]:
    if not shape:
        return {"type": "number"}
    return {"type": "array", "minItems": shape[0], "maxItems": shape[0], "items": _nested_array(shape[1:])}
