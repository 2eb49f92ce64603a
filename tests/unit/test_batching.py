"""Adaptive batching: concurrent requests share graph runs and each gets exactly its own answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from driftloop.models.registry import Registry
from driftloop.service.batching import Batcher, batching_enabled
from driftloop.training.scenarios import scenario_frame


@pytest.fixture(scope="module")
def model(champion_home: Path):  # noqa: ANN201
    registry = Registry(champion_home / "bentoml", "loans")
    return registry.load("v1")


@pytest.fixture(scope="module")
def requests(model) -> list[list[dict]]:  # noqa: ANN001
    frame = scenario_frame("loans", seed=3)
    rows = frame[model.schema.names].head(200).to_dict("records")
    sizes = [1, 3, 1, 7, 2, 1, 40, 1, 5, 1]  # uneven requests, 62 rows
    out, at = [], 0
    for n in sizes:
        out.append(rows[at:at + n])
        at += n
    return out


def test_concurrent_requests_get_their_own_rows_back(model, requests) -> None:  # noqa: ANN001
    seen: list[int] = []
    batcher = Batcher(max_rows=16, observe=seen.append)

    async def scenario() -> list:
        return await asyncio.gather(*(batcher.run(model, model.schema.validate_rows(r), len(r)) for r in requests))

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    for rows, (preds, proba) in zip(requests, results):
        alone, alone_proba = model.predict(model.schema.validate_rows(rows))
        assert preds.tolist() == alone.tolist() and np.allclose(proba, alone_proba, atol=1e-6)
    assert sum(seen) == sum(len(r) for r in requests)  # every row ran exactly once
    assert len(seen) < len(requests)  # and some requests shared a run
    assert max(seen) == 40 and all(n <= 16 for n in seen if n != 40)  # a big request runs alone


def test_a_batch_holds_one_model_version(model, requests) -> None:  # noqa: ANN001
    class Other:  # another version's model: same graph, its own identity
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner, self.calls = inner, []

        def predict(self, feeds):  # noqa: ANN001, ANN201
            self.calls.append(len(next(iter(feeds.values()))))
            return self.inner.predict(feeds)

    a, b = Other(model), Other(model)
    batcher = Batcher(max_rows=512)

    async def scenario() -> None:
        jobs = [batcher.run(m, model.schema.validate_rows(r), len(r)) for r, m in zip(requests, [a, b] * 5)]
        await asyncio.gather(*jobs)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert sum(a.calls) == sum(len(r) for r in requests[0::2]) and sum(b.calls) == sum(len(r) for r in requests[1::2])


def test_a_failing_graph_fails_every_request_of_its_batch(model, requests) -> None:  # noqa: ANN001
    class Broken:
        def predict(self, feeds):  # noqa: ANN001, ANN201
            raise RuntimeError("the graph failed")

    batcher = Batcher(max_rows=512)

    async def scenario() -> list:
        return await asyncio.gather(*(batcher.run(Broken(), model.schema.validate_rows(r), len(r))
                                      for r in requests[:3]), return_exceptions=True)

    try:
        errors = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [str(e) for e in errors] == ["the graph failed"] * 3


def test_auto_batches_neural_kinds_only(model) -> None:  # noqa: ANN001
    assert batching_enabled("auto", model) is False  # gradient boosting
    assert batching_enabled("on", model) and not batching_enabled("off", model)

    class Neural:
        metadata = {"kind": "gru"}

    assert batching_enabled("auto", Neural())  # type: ignore[arg-type]
