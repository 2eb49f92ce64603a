"""Export to ONNX with preprocessing inside the graph, check parity, and run the graph.

The graph takes one ``(n, 1)`` input per feature (float32 for numeric, string for categorical)
and returns ``label`` (and ``probabilities`` for classifiers, as a plain tensor, no ZipMap).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf  # where onnxruntime's errors live

if TYPE_CHECKING:  # a serving worker loads graphs: it needs neither pandas nor scikit-learn here
    import pandas as pd
    from sklearn.pipeline import Pipeline

from driftloop.models.errors import ExportError
from driftloop.models.schema import FeatureSchema, example_row

# Parity tolerances: the graph computes in float32, scikit-learn in float64.
PROBA_TOLERANCE = 1e-4
LABEL_AGREEMENT = 0.999
REGRESSION_RTOL = 1e-4
OPSET = {"": 17, "ai.onnx.ml": 3}
EMBEDDING = "embedding"  # optional last output of neural graphs: (n, d) float32, for drift; never served
EXTERNAL_KEY = b"location"  # the key of an external tensor's file name, in a graph's bytes


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: float  # probabilities (classification) or predictions (regression)
    label_agreement: float | None  # classification only

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "max_abs_diff": self.max_abs_diff, "label_agreement": self.label_agreement}


def export_onnx(pipeline: Pipeline, schema: FeatureSchema) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(f.name, FloatTensorType([None, 1]) if f.kind == "numeric" else StringTensorType([None, 1]))
              for f in schema.features]
    options = {id(pipeline.steps[-1][1]): {"zipmap": False}} if schema.task == "classification" else None
    try:
        with warnings.catch_warnings():
            # skl2onnx's SVC converter reads probA_/probB_, deprecated in scikit-learn 1.9
            warnings.filterwarnings("ignore", message="Attribute `prob[AB]_` was deprecated", category=FutureWarning)
            graph = convert_sklearn(pipeline, initial_types=inputs, options=options, target_opset=OPSET)
    except Exception as exc:  # converters raise anything from RuntimeError to NameError
        raise ExportError(f"skl2onnx could not convert {type(pipeline.steps[-1][1]).__name__}: {exc}") from exc
    if schema.task == "anomaly":
        graph = _anomaly_outputs(graph)
    return graph.SerializeToString()


def _anomaly_outputs(graph: Any) -> Any:
    """IsolationForest's outputs in driftloop's terms: label 1 = anomaly (scikit-learn: -1) and
    a score that grows with anomaly (scikit-learn's decision function, negated), both ``(n,)``."""
    from onnx import TensorProto, helper

    label, scores = (o.name for o in graph.graph.output)
    g = graph.graph
    g.initializer.extend([helper.make_tensor("dl_zero", TensorProto.INT64, [], [0]),
                          helper.make_tensor("dl_flat", TensorProto.INT64, [1], [-1])])
    g.node.extend([
        helper.make_node("Less", [label, "dl_zero"], ["dl_is_outlier"]),
        helper.make_node("Cast", ["dl_is_outlier"], ["dl_label_2d"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["dl_label_2d", "dl_flat"], ["anomaly"]),
        helper.make_node("Neg", [scores], ["dl_score_2d"]),
        helper.make_node("Reshape", ["dl_score_2d", "dl_flat"], ["anomaly_score"]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("anomaly", TensorProto.INT64, [None]),
                     helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None])])
    return graph


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(device: str) -> tuple[str, list[str]]:
    """``serving.device`` (auto | cpu | cuda) as the device name and onnxruntime's providers.

    ``auto`` takes the GPU when onnxruntime's CUDA provider is installed (onnxruntime-gpu, the
    ``gpu`` extra); ``cuda`` without it is a configuration error, raised at start.
    """
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ExportError(f"serving.device is cuda but onnxruntime offers only {available}: "
                          "install the gpu extra (onnxruntime-gpu) on a machine with an NVIDIA GPU")
    if device in ("auto", "cuda") and CUDA in available:
        return "cuda", [CUDA, CPU]
    return "cpu", [CPU]


def check_external_data(onnx_bytes: bytes, model_dir: Path, checksummed: Collection[str]) -> list[Path]:
    """The external-data files a graph names, each one of the version's own checksummed files.

    A graph can keep its weights in side files named by relative paths, which onnxruntime opens
    relative to the graph's file (or to the working directory, for a graph given as bytes). A
    location may only name a file in ``model_dir`` that ``checksummed`` lists (the names the
    version's metadata, or an archive's manifest, records a sha256 for): anything else could read
    a file of the host (``../x``, an absolute path, a link out, or a plain ``passwd`` that is not
    the version's own) and is refused with :class:`IntegrityError` naming the tensor and the
    location, as is a listed file that does not exist.

    A graph whose bytes never spell ``location`` names no file (an external tensor's file is the
    ``location`` entry of its ``external_data``, a protobuf string stored as it is spelt): it is
    not parsed, and a serving worker that loads such a graph never imports the onnx package.
    """
    if EXTERNAL_KEY not in onnx_bytes:
        return []
    import onnx

    from driftloop.adapters.onnx import all_tensors
    from driftloop.models.errors import IntegrityError

    try:
        proto = onnx.load_from_string(onnx_bytes)  # never reads external data itself
    except Exception as exc:  # DecodeError and friends: the caller refuses the graph
        raise ExportError(f"not a readable ONNX graph: {exc}") from exc
    root = Path(model_dir).resolve()
    own = {Path(name).as_posix() for name in checksummed}
    files: list[Path] = []
    for tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        path = (root / location).resolve()
        if not location or Path(location).is_absolute() or not path.is_relative_to(root):
            raise IntegrityError(f"tensor {tensor.name!r}: external data path {location!r} points outside "
                                 f"the model directory {root}; refused")
        if path.relative_to(root).as_posix() not in own:
            raise IntegrityError(f"tensor {tensor.name!r}: external data location {location!r} is not one of the "
                                 f"version's own checksummed files {sorted(own)}; refused")
        if not path.is_file():
            raise IntegrityError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        files.append(path)
    return files


def session(onnx_bytes: bytes, providers: list[str] | None = None, threads: int = 1,
            source: Path | None = None) -> ort.InferenceSession:
    """An onnxruntime session on the graph's bytes (``source``: load from that file instead, for
    a graph whose weights are in external-data files beside it)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(source) if source else onnx_bytes, sess_options=opts, providers=providers or [CPU])


def served_outputs(sess: ort.InferenceSession) -> list[str]:
    """The outputs an answer is made of: all but ``embedding`` (computed only for drift)."""
    return [o.name for o in sess.get_outputs() if o.name != EMBEDDING]


class GraphOutput(NamedTuple):
    """What a graph answers for a batch of rows; unpacks as ``preds, scores = ...``.

    ``scores`` is the task's second output, named in a ``/predict`` answer by
    :data:`~driftloop.models.schema.SCORES_FIELD`: class probabilities ``(n, classes)`` in the
    schema's label order (classification), distances to every cluster centre ``(n, clusters)``
    (clustering), anomaly scores ``(n,)`` (anomaly); ``None`` for regression."""

    predictions: np.ndarray  # (n,)
    scores: np.ndarray | None


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None) -> GraphOutput:
    """The graph's predictions and scores (:class:`GraphOutput`); an ``embedding`` output is not
    computed here (see :meth:`OnnxModel.embed_frame`). ``outputs``: :func:`served_outputs`, when
    the caller has it at hand."""
    outputs = sess.run(outputs or served_outputs(sess), feeds)
    preds = np.asarray(outputs[0]).reshape(-1)
    scores = np.asarray(outputs[1]) if len(outputs) > 1 else None
    return GraphOutput(preds, scores)


def check_parity(native: Any, onnx_bytes: bytes, schema: FeatureSchema, frame: pd.DataFrame) -> Parity:
    """The ONNX graph against the native model (``predict``, ``predict_proba``) on ``frame``;
    raises :class:`ExportError` beyond tolerance."""
    preds, scores = run(session(onnx_bytes), schema.feeds(frame))
    x = frame[schema.names]
    if schema.task in ("clustering", "anomaly"):
        agreement = float(np.mean(preds == np.asarray(native.predict(x)).reshape(-1)))
        native_scores = np.asarray(native.scores(x))
        diff = float(np.max(np.abs(native_scores - scores))) if len(x) else 0.0
        scale = max(float(np.max(np.abs(native_scores))), 1.0) if len(x) else 1.0
        if diff > REGRESSION_RTOL * scale or agreement < LABEL_AGREEMENT:
            raise ExportError(f"ONNX parity failed: max score difference {diff:.2e} (scale {scale:.3g}), "
                              f"label agreement {agreement:.4f} (required {LABEL_AGREEMENT})")
        return Parity(len(x), diff, agreement)
    if schema.task == "classification":
        native_proba = native.predict_proba(x)
        diff = float(np.max(np.abs(native_proba - scores))) if len(x) else 0.0
        agreement = float(np.mean(preds == native.predict(x)))
        parity = Parity(len(x), diff, agreement)
        if diff > PROBA_TOLERANCE or agreement < LABEL_AGREEMENT:
            raise ExportError(f"ONNX parity failed: max probability difference {diff:.2e} "
                              f"(tolerance {PROBA_TOLERANCE:.0e}), label agreement {agreement:.4f} "
                              f"(required {LABEL_AGREEMENT})")
        return parity
    native_preds = np.asarray(native.predict(x)).reshape(-1)
    diff = float(np.max(np.abs(native_preds - preds))) if len(x) else 0.0
    scale = float(np.max(np.abs(native_preds))) or 1.0
    if diff > REGRESSION_RTOL * scale:
        raise ExportError(f"ONNX parity failed: max prediction difference {diff:.3g} "
                          f"exceeds {REGRESSION_RTOL:.0e} of the prediction scale {scale:.3g}")
    return Parity(len(x), diff, None)


class OnnxModel:
    """A loaded, verified version: what a serving worker holds and swaps atomically."""

    def __init__(self, version: str, schema: FeatureSchema, sess: ort.InferenceSession,
                 metadata: dict[str, Any]) -> None:
        self.version = version
        self.schema = schema
        self.session = sess
        self.metadata = metadata
        self.providers = sess.get_providers()
        self.outputs = served_outputs(sess)  # once: looked up on every request otherwise

    @classmethod
    def from_bytes(cls, version: str, schema: FeatureSchema, onnx_bytes: bytes, metadata: dict[str, Any],
                   providers: list[str] | None = None, source: Path | None = None) -> OnnxModel:
        try:
            sess = session(onnx_bytes, providers, source=source)
        except InvalidProtobuf as exc:  # bytes that do not parse (check_external_data leaves them to onnxruntime)
            raise ExportError(f"version {version}: not a readable ONNX graph: {exc}") from exc
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ExportError(f"version {version}: onnxruntime refused the graph: {exc}") from exc
        names = [i.name for i in sess.get_inputs()]
        if names != schema.names:
            raise ExportError(f"version {version}: graph inputs {names} do not match the schema {schema.names}")
        return cls(version, schema, sess, metadata)

    def predict(self, feeds: dict[str, np.ndarray]) -> GraphOutput:
        return run(self.session, feeds, self.outputs)

    @property
    def has_embedding(self) -> bool:
        return any(o.name == EMBEDDING for o in self.session.get_outputs())

    def embed_frame(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The network's embedding of each row, ``(n, d)``; ``None`` when the graph has none."""
        if not self.has_embedding:
            return None
        return np.asarray(self.session.run([EMBEDDING], self.schema.feeds(frame))[0])

    def predict_frame(self, frame: pd.DataFrame) -> GraphOutput:
        return self.predict(self.schema.feeds(frame))

    def warm_up(self, frame: pd.DataFrame | None = None) -> None:
        """One real prediction, so a graph that loads but cannot run is refused before serving: on
        ``frame``'s rows, or on the schema's :func:`~driftloop.models.schema.example_row`."""
        try:
            if frame is None:
                self.predict(self.schema.feeds({name: [value] for name, value in example_row(self.schema).items()}))
            else:
                self.predict_frame(frame)
        except Exception as exc:
            raise ExportError(f"version {self.version}: warm-up prediction failed: {exc}") from exc
