"""PyTorch families for tabular data: an MLP classifier or regressor.

The model is the shared preprocessing (:func:`models.families.preprocessor`: scaling and one-hot
encoding, fitted with scikit-learn) followed by a network trained with Adam and early stopping.
Its ONNX graph is both halves merged: skl2onnx converts the preprocessing (raw features in, one
float matrix out), ``torch.onnx.export`` converts the network, and ``onnx.compose`` joins them,
so the service still feeds raw features. Classifiers end with the class labels gathered from the
arg-max; regressors undo the target scaling inside the network.

Fine-tuning: ``warm_start`` takes the champion's ONNX graph; every network weight whose name and
shape agree is copied from its initializers before training (no pickle anywhere).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer

from driftloop.models.errors import ConfigError, ExportError
from driftloop.models.onnx_model import EMBEDDING
from driftloop.models.schema import FeatureSchema

log = logging.getLogger("driftloop.neural")
# A fit's progress (epoch, losses, accuracy), every PROGRESS_EVERY_S and at the end: `driftloop
# train` shows it, and the monitor's log has it for a retrain.
progress = logging.getLogger("driftloop.progress")
PROGRESS_EVERY_S = 2.0
OPSET = 18
NET_PREFIX = "net."  # initializer names of the network's weights in the exported graph


@dataclass(frozen=True)
class MLPParams:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation loss before stopping
    validation_fraction: float = 0.1  # of the training rows, for early stopping

    @classmethod
    def parse(cls, params: dict[str, Any]) -> MLPParams:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"model.params: unknown parameter(s) {unknown} for an MLP; known: {sorted(known)}")
        values = dict(params)
        for name in ("hidden", "channels"):
            if name in values:
                values[name] = tuple(int(h) for h in values[name])
        return cls(**values)


def _network(n_in: int, n_out: int, p: MLPParams) -> Any:
    import torch

    layers: list[Any] = []
    width = n_in
    for h in p.hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        if p.dropout:
            layers.append(torch.nn.Dropout(p.dropout))
        width = h
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


class _Head:
    """The module that is exported: network plus the task's output layer.

    ``embedding``: the network (which then has ``embed(x)``, its last hidden layer, and ``out(e)``,
    the output layer on it) also returns its embedding, the graph's last output (drift on it).
    """

    @staticmethod
    def build(net: Any, task: str, y_mean: float, y_std: float, embedding: bool = False) -> Any:
        import torch

        class Classifier(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                if not embedding:
                    proba = torch.softmax(self.net(x), dim=1)
                    return torch.argmax(proba, dim=1), proba
                e = self.net.embed(x)
                proba = torch.softmax(self.net.out(e), dim=1)
                return torch.argmax(proba, dim=1), proba, e

        class Regressor(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
                if not embedding:
                    return self.net(x).reshape(-1) * y_std + y_mean
                e = self.net.embed(x)
                return self.net.out(e).reshape(-1) * y_std + y_mean, e

        return (Classifier() if task == "classification" else Regressor()).eval()


class TorchTabularModel:
    """A fitted preprocessing + network, as a :class:`models.families.Trained` model."""

    def __init__(self, pre: ColumnTransformer, net: Any, task: str, classes: list[Any],
                 y_mean: float = 0.0, y_std: float = 1.0, epochs: int = 0) -> None:
        self.pre = pre
        self.net = net.eval()
        self.task = task
        self.classes = classes
        self.y_mean, self.y_std = y_mean, y_std
        self.epochs = epochs

    def _matrix(self, x: pd.DataFrame) -> Any:
        import torch

        return torch.from_numpy(np.asarray(self.pre.transform(x), dtype=np.float32))

    def _outputs(self, x: pd.DataFrame) -> Any:
        import torch

        with torch.no_grad():
            return _Head.build(self.net, self.task, self.y_mean, self.y_std)(self._matrix(x))

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        if self.task == "classification":
            index, _ = self._outputs(x)
            return np.asarray(self.classes)[index.numpy()]
        return self._outputs(x).numpy()

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        if self.task != "classification":
            return None
        return self._outputs(x)[1].numpy()

    def scores(self, x: pd.DataFrame) -> np.ndarray | None:
        return None

    def to_onnx(self, schema: FeatureSchema) -> bytes:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        inputs = [(f.name, FloatTensorType([None, 1]) if f.kind == "numeric" else StringTensorType([None, 1]))
                  for f in schema.features]
        try:
            pre = convert_sklearn(self.pre, initial_types=inputs, target_opset={"": OPSET, "ai.onnx.ml": 3})
            net = _export_network(_Head.build(self.net, self.task, self.y_mean, self.y_std),
                                  int(self.pre.transform(pd.DataFrame([{f.name: _example(f) for f in schema.features}]))
                                      .shape[1]), self.task)
            return _compose(pre, net, self.task, self.classes)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"could not export the MLP to ONNX: {exc}") from exc


def _example(feature: Any) -> Any:
    return feature.categories[0] if feature.kind == "categorical" else 0.0


def _export_network(head: Any, shape: int | tuple[int, ...], task: str, input_name: str = "features",
                    embedding: bool = False) -> Any:
    """The network alone as an ONNX graph with a dynamic row dimension; ``shape`` is one row's.
    ``embedding``: the head returns its embedding last (``EMBEDDING``)."""
    import onnx
    import torch

    outputs = {"classification": ["label_index", "probabilities"], "regression": ["prediction"],
               "anomaly": ["anomaly", "anomaly_score"]}[task] + ([EMBEDDING] if embedding else [])
    example = (torch.zeros(2, *((shape,) if isinstance(shape, int) else shape)),)
    chatty = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    try:
        for logger in chatty:  # "torchvision is not installed", optimizer passes, ...
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
            program = torch.onnx.export(head, example, input_names=[input_name], output_names=outputs,
                                        dynamic_shapes=({0: torch.export.Dim("rows")},), opset_version=OPSET,
                                        verbose=False)
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
    return onnx.load_from_string(program.model_proto.SerializeToString())


def _compose(pre: Any, net: Any, task: str, classes: list[Any]) -> bytes:
    """The preprocessing graph feeding the network's graph, as one graph."""
    from onnx import compose, version_converter

    pre = version_converter.convert_version(pre, OPSET)  # skl2onnx picks the lowest opset it needs
    domains = {o.domain for o in net.opset_import}
    net.opset_import.extend(o for o in pre.opset_import if o.domain not in domains)
    pre.ir_version = net.ir_version = max(pre.ir_version, net.ir_version)
    merged = compose.merge_models(pre, net, io_map=[(pre.graph.output[0].name, "features")])
    return _finish(merged, task, classes)


def _finish(merged: Any, task: str, classes: list[Any]) -> bytes:
    """driftloop's outputs: class labels gathered from the arg-max, probabilities; or the value;
    then the embedding where the network exports one (always last: readers take outputs by name)."""
    import onnx
    from onnx import TensorProto, helper

    outputs = {o.name: o for o in merged.graph.output}
    del merged.graph.output[:]
    if task == "classification":
        if all(isinstance(c, (int, np.integer)) for c in classes):
            table = helper.make_tensor("class_labels", TensorProto.INT64, [len(classes)], [int(c) for c in classes])
            label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
        else:
            table = helper.make_tensor("class_labels", TensorProto.STRING, [len(classes)],
                                       [str(c).encode() for c in classes])
            label = helper.make_tensor_value_info("label", TensorProto.STRING, [None])
        merged.graph.initializer.append(table)
        merged.graph.node.append(helper.make_node("Gather", ["class_labels", "label_index"], ["label"], axis=0))
        merged.graph.output.extend([label, outputs["probabilities"]])
    elif task == "anomaly":
        merged.graph.output.extend([outputs["anomaly"], outputs["anomaly_score"]])
    else:
        merged.graph.output.append(outputs["prediction"])
    if EMBEDDING in outputs:
        merged.graph.output.append(outputs[EMBEDDING])
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def warm_weights(onnx_bytes: bytes) -> dict[str, np.ndarray]:
    """The network weights inside an exported graph, by parameter name (``net.0.weight``, ...)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name.startswith(NET_PREFIX)}


def fit_mlp(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series, params: dict[str, Any], seed: int,
            warm_start: bytes | None = None) -> TorchTabularModel:
    import torch

    from driftloop.models.families import preprocessor

    p = MLPParams.parse(params)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pre = preprocessor(schema).fit(x)
    features = np.asarray(pre.transform(x), dtype=np.float32)

    t = Targets.of(schema.task, y)
    net = _network(features.shape[1], t.n_out, p)
    if warm_start is not None:
        _load_matching(net, warm_weights(warm_start))

    epoch, best = train_network(net, torch.from_numpy(features), t.tensor, t.loss, p, rng)
    log.info("MLP trained for %d epochs, best validation loss %.4f", epoch, best)
    return TorchTabularModel(pre, net, schema.task, t.classes, t.mean, t.std, epochs=epoch)


@dataclass(frozen=True)
class Targets:
    """The target as the network learns it: class indices, or a standardised value."""

    tensor: Any
    loss: Any
    n_out: int
    classes: list[Any]
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def of(cls, task: str, y: pd.Series) -> Targets:
        import torch

        if task == "classification":
            classes = sorted(pd.unique(y).tolist())
            index = {c: i for i, c in enumerate(classes)}
            return cls(torch.tensor([index[v] for v in y.tolist()], dtype=torch.long), torch.nn.CrossEntropyLoss(),
                       len(classes), classes)
        values = np.asarray(y, dtype=np.float64)
        mean, std = float(values.mean()), float(values.std() or 1.0)
        return cls(torch.tensor((values - mean) / std, dtype=torch.float32).reshape(-1, 1), torch.nn.MSELoss(),
                   1, [], mean, std)


def train_network(net: Any, xs: Any, target: Any, loss_fn: Any, p: MLPParams,
                  rng: np.random.Generator) -> tuple[int, float]:
    """Adam on mini-batches, early stopping on a held-out share of the rows; the best weights
    are restored. Returns (epochs run, best validation loss)."""
    import torch

    order = rng.permutation(len(xs))
    n_val = max(1, int(len(xs) * p.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    opt = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    best, best_state, waited, epoch, best_epoch = float("inf"), None, 0, 0, 0
    classes = target.dtype == torch.int64  # cross-entropy on class indices: accuracy is shown too
    started = shown = time.monotonic()
    for epoch in range(1, p.epochs + 1):
        net.train()
        total, batches = 0.0, 0
        for start in range(0, len(train_idx), p.batch_size):
            batch = torch.from_numpy(train_idx[start:start + p.batch_size])
            opt.zero_grad()
            loss = loss_fn(net(xs[batch]), target[batch])
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        rng.shuffle(train_idx)
        net.eval()
        with torch.no_grad():
            out = net(xs[val_idx])
            val_loss = float(loss_fn(out, target[val_idx]))
            accuracy = float((out.argmax(1) == target[val_idx]).float().mean()) if classes and out.dim() == 2 else None
        if val_loss < best - 1e-6:
            best, waited, best_epoch = val_loss, 0, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            waited += 1
        stopping = waited >= p.patience or epoch == p.epochs
        if stopping or time.monotonic() - shown >= PROGRESS_EVERY_S:  # a line every few seconds, and the last
            shown = time.monotonic()
            progress.info("epoch %d/%d: train loss %.4f, validation loss %.4f%s (best %.4f at epoch %d)%s, %.1fs",
                          epoch, p.epochs, total / max(batches, 1), val_loss,
                          "" if accuracy is None else f", accuracy {accuracy:.3f}", best, best_epoch,
                          f", stopping: no better for {p.patience} epochs" if waited >= p.patience else "",
                          shown - started)
        if waited >= p.patience:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return epoch, best


def _load_matching(net: Any, weights: dict[str, np.ndarray]) -> int:
    import torch

    state = net.state_dict()
    copied = 0
    for name, tensor in state.items():
        source = weights.get(NET_PREFIX + name)
        if source is not None and tuple(source.shape) == tuple(tensor.shape):
            state[name] = torch.from_numpy(np.array(source))
            copied += 1
    net.load_state_dict(state)
    log.info("warm start: %d of %d weight tensors copied from the champion", copied, len(state))
    return copied


# -- the autoencoder: anomaly scores from reconstruction error ---------------------------------


@dataclass(frozen=True)
class AutoencoderParams(MLPParams):
    hidden: tuple[int, ...] = (32, 8)  # encoder widths; the decoder mirrors them
    contamination: float = 0.05  # share of training rows above the anomaly threshold


class _Reconstruction:
    @staticmethod
    def build(net: Any, threshold: float) -> Any:
        import torch

        class Scorer(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                error = torch.mean((self.net(x) - x) ** 2, dim=1)
                return (error > threshold).to(torch.int64), error

        return Scorer().eval()


class TorchAutoencoderModel:
    """Preprocessing + autoencoder: a row is an anomaly when it reconstructs badly."""

    task = "anomaly"

    def __init__(self, pre: ColumnTransformer, net: Any, threshold: float, epochs: int = 0) -> None:
        self.pre = pre
        self.net = net.eval()
        self.threshold = threshold
        self.epochs = epochs

    def _outputs(self, x: pd.DataFrame) -> Any:
        import torch

        with torch.no_grad():
            matrix = torch.from_numpy(np.asarray(self.pre.transform(x), dtype=np.float32))
            return _Reconstruction.build(self.net, self.threshold)(matrix)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self._outputs(x)[0].numpy()

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        return None

    def scores(self, x: pd.DataFrame) -> np.ndarray:
        return self._outputs(x)[1].numpy()

    def to_onnx(self, schema: FeatureSchema) -> bytes:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        inputs = [(f.name, FloatTensorType([None, 1]) if f.kind == "numeric" else StringTensorType([None, 1]))
                  for f in schema.features]
        try:
            pre = convert_sklearn(self.pre, initial_types=inputs, target_opset={"": OPSET, "ai.onnx.ml": 3})
            width = int(self.pre.transform(pd.DataFrame([{f.name: _example(f) for f in schema.features}])).shape[1])
            net = _export_network(_Reconstruction.build(self.net, self.threshold), width, "anomaly")
            return _compose(pre, net, "anomaly", [])
        except Exception as exc:
            raise ExportError(f"could not export the autoencoder to ONNX: {exc}") from exc


def fit_autoencoder(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series | None, params: dict[str, Any],
                    seed: int, warm_start: bytes | None = None) -> TorchAutoencoderModel:
    import torch

    from driftloop.models.families import preprocessor

    p = AutoencoderParams.parse(params)
    if not 0.0 < p.contamination < 0.5:
        raise ConfigError(f"model.params.contamination must be in (0, 0.5), got {p.contamination}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pre = preprocessor(schema).fit(x)
    xs = torch.from_numpy(np.asarray(pre.transform(x), dtype=np.float32))
    widths = [xs.shape[1], *p.hidden]
    layers: list[Any] = []
    for a, b in zip(widths[:-1], widths[1:]):  # encoder
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    for a, b in zip(widths[::-1][:-1], widths[::-1][1:]):  # decoder
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])  # linear output
    if warm_start is not None:
        _load_matching(net, warm_weights(warm_start))

    epoch, _ = train_network(net, xs, xs, torch.nn.MSELoss(), p, rng)
    net.eval()
    with torch.no_grad():
        errors = torch.mean((net(xs) - xs) ** 2, dim=1).numpy()
    threshold = float(np.quantile(errors, 1.0 - p.contamination))
    log.info("autoencoder trained for %d epochs; threshold %.4g flags %.1f%% of training rows", epoch, threshold,
             100 * float(np.mean(errors > threshold)))
    return TorchAutoencoderModel(pre, net, threshold, epochs=epoch)
