"""Networks over array features: a CNN for images, a GRU or LSTM for sequences.

The model takes exactly one image ``(height, width)`` or sequence ``(steps, channels)`` feature.
Input standardisation (per channel for sequences) is part of the network, so the ONNX graph
takes the raw arrays a client sends; the output layer is the same as the MLP's (class labels
gathered from the arg-max, or the target's scaling undone). Training, early stopping,
fine-tuning and the export are shared with :mod:`models.neural`. The graph also returns the
network's embedding of each row (the last hidden layer, output ``embedding``, last): the
monitor's drift check on images and sequences compares those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, ExportError
from driftloop.models.neural import (
    MLPParams,
    Targets,
    _export_network,
    _finish,
    _Head,
    _load_matching,
    train_network,
    warm_weights,
)
from driftloop.models.schema import Feature, FeatureSchema, as_array

log = logging.getLogger("driftloop.neural")


@dataclass(frozen=True)
class ArrayNetParams(MLPParams):
    hidden: tuple[int, ...] = (64,)  # dense layers after the convolutional or recurrent block
    channels: tuple[int, ...] = (16, 32)  # cnn: convolution channels (3x3, then one 2x2 max-pool)
    units: int = 32  # gru/lstm: hidden size
    layers: int = 1  # gru/lstm: stacked layers
    epochs: int = 100
    batch_size: int = 32  # small data sets: many small steps
    lr: float = 3e-3
    patience: int = 8


def _one_array_feature(schema: FeatureSchema, kind: str, wanted: str) -> Feature:
    media = schema.media
    if len(schema.features) != 1 or len(media) != 1 or media[0].kind != wanted:
        raise ConfigError(f"model.kind: {kind!r} takes exactly one {wanted} feature; the features are "
                          f"{[(f.name, f.kind) for f in schema.features]}")
    return media[0]


def _build(kind: str, feature: Feature, n_out: int, p: ArrayNetParams, mean: np.ndarray, std: np.ndarray) -> Any:
    import torch

    class Standardise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
            self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    def dense(width: int) -> list[Any]:
        layers: list[Any] = []
        for h in p.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        return [*layers, torch.nn.Linear(width, n_out)]

    if kind == "cnn":
        height, width = feature.shape
        convs: list[Any] = []
        c_in = 1
        for c in p.channels:
            convs += [torch.nn.Conv2d(c_in, c, 3, padding=1), torch.nn.ReLU()]
            c_in = c
        convs.append(torch.nn.MaxPool2d(2))

        class CNN(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.scale = Standardise()
                self.convs = torch.nn.Sequential(*convs)
                self.head = torch.nn.Sequential(*dense(c_in * (height // 2) * (width // 2)))

            def embed(self, x: torch.Tensor) -> torch.Tensor:
                return _hidden(self.head, self.convs(self.scale(x).unsqueeze(1)).flatten(1))

            def out(self, e: torch.Tensor) -> torch.Tensor:
                return self.head[-1](e)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.out(self.embed(x))

        return CNN()

    rnn_type = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    channels = feature.shape[1]

    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = Standardise()
            self.rnn = rnn_type(channels, p.units, num_layers=p.layers, batch_first=True)
            self.head = torch.nn.Sequential(*dense(p.units))

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.scale(x))
            return _hidden(self.head, out[:, -1, :])

        def out(self, e: torch.Tensor) -> torch.Tensor:
            return self.head[-1](e)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(x))

    return Recurrent()


def _hidden(head: Any, x: Any) -> Any:
    """The dense head up to its output layer: the network's embedding of a row (the last hidden
    layer's activations; the convolutional or recurrent features when there is no hidden layer)."""
    for layer in list(head)[:-1]:
        x = layer(x)
    return x


class TorchArrayModel:
    """A fitted CNN/GRU/LSTM as a :class:`models.families.Trained` model."""

    def __init__(self, kind: str, feature: Feature, net: Any, task: str, targets: Targets, epochs: int) -> None:
        self.kind = kind
        self.feature = feature
        self.net = net.eval()
        self.task = task
        self.classes = targets.classes
        self.y_mean, self.y_std = targets.mean, targets.std
        self.epochs = epochs

    def _outputs(self, x: pd.DataFrame) -> Any:
        import torch

        arrays = np.stack([as_array(v) for v in x[self.feature.name]])
        with torch.no_grad():
            return _Head.build(self.net, self.task, self.y_mean, self.y_std)(torch.from_numpy(arrays))

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(self.classes)[self._outputs(x)[0].numpy()]
        return self._outputs(x).numpy()

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        return self._outputs(x)[1].numpy() if self.task == "classification" else None

    def embed(self, x: pd.DataFrame) -> np.ndarray:
        """The network's embedding of each row (the graph's ``embedding`` output)."""
        import torch

        arrays = np.stack([as_array(v) for v in x[self.feature.name]])
        with torch.no_grad():
            return self.net.embed(torch.from_numpy(arrays)).numpy()

    def scores(self, x: pd.DataFrame) -> np.ndarray | None:
        return None

    def to_onnx(self, schema: FeatureSchema) -> bytes:
        try:
            graph = _export_network(_Head.build(self.net, self.task, self.y_mean, self.y_std, embedding=True),
                                    self.feature.shape, self.task, input_name=self.feature.name, embedding=True)
            return _finish(graph, self.task, self.classes)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"could not export the {self.kind} to ONNX: {exc}") from exc


def fit_array_net(kind: str, schema: FeatureSchema, x: pd.DataFrame, y: pd.Series, params: dict[str, Any],
                  seed: int, warm_start: bytes | None = None) -> TorchArrayModel:
    import torch

    feature = _one_array_feature(schema, kind, "image" if kind == "cnn" else "sequence")
    p = ArrayNetParams.parse(params)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arrays = np.stack([as_array(v) for v in x[feature.name]])
    if kind == "cnn":  # one mean and spread for the whole image
        mean, std = np.asarray(arrays.mean()), np.asarray(arrays.std() or 1.0)
    else:  # per channel
        mean, std = arrays.mean(axis=(0, 1)), arrays.std(axis=(0, 1))
        std = np.where(std > 0, std, 1.0)
    t = Targets.of(schema.task, y)
    net = _build(kind, feature, t.n_out, p, mean, std)
    if warm_start is not None:
        _load_matching(net, warm_weights(warm_start))
    epoch, best = train_network(net, torch.from_numpy(arrays), t.tensor, t.loss, p, rng)
    log.info("%s trained for %d epochs, best validation loss %.4f", kind, epoch, best)
    return TorchArrayModel(kind, feature, net, schema.task, t, epoch)
