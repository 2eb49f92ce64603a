"""The retrain gate on real models: how often it promotes a candidate that is no better, and how
often it promotes one that is.

    .venv/bin/python -m bench.gate [--models 16] [--trials 300] [--holdout 250] [--json PATH]

On the built-in ``loans`` scenario, through the ONNX graphs that would serve (``training.fit``):

- **equal**: ``--models`` models of the configured kind, each trained on its own ``--rows`` rows
  of the *same* distribution; ``--trials`` times, two of them (a champion and a candidate) are
  judged on fresh held-out rows from that distribution. Neither is truly better, so every
  promotion is a false one.
- **covariate** and **concept**: a champion trained on the scenario's 3,000 initial rows against
  candidates trained on ``--rows`` rows after the change, judged on fresh post-change rows. The
  candidates are truly better; a promotion is a right one (power).

For each, the promotion rate of the margin alone (``retraining.margin``, today's default gate)
and of the margin with the paired test at ``--significance`` (``training.evaluate.compare``).
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.models.onnx_model import OnnxModel
from driftloop.settings import load_settings
from driftloop.training import scenarios
from driftloop.training.evaluate import compare
from driftloop.training.train import fit


def _period(name: str, rows: int, seed: int) -> Any:
    kinds = {"stable": scenarios.Period("stable", rows),
             "covariate": scenarios.Period("covariate", rows, population=scenarios.SEGMENT),
             "concept": scenarios.Period("concept", rows, population=scenarios.SEGMENT, rule=scenarios.RATE_RISE)}
    return scenarios.generate([kinds[name]], seed=seed)


def _models(settings: Any, world: str, count: int, rows: int, seed: int) -> list[OnnxModel]:
    return [fit(settings, _period(world, rows, seed + i)).model() for i in range(count)]


def _rates(pairs: list[tuple[OnnxModel, OnnxModel]], world: str, holdout: int, margin: float,
           significance: float, seed: int) -> dict[str, Any]:
    target = scenarios.TARGET
    margin_only = with_test = 0
    gains = []
    for i, (champion, candidate) in enumerate(pairs):
        rows = _period(world, holdout, seed + i)
        c = compare("classification", rows[target], champion.predict_frame(rows).predictions,
                    candidate.predict_frame(rows).predictions, margin=margin, significance=significance)
        margin_only += c.margin_passed
        with_test += c.passed
        gains.append(c.gain)
    return {"trials": len(pairs), "promoted_margin_only": margin_only / len(pairs),
            "promoted_with_test": with_test / len(pairs), "mean_gain": float(np.mean(gains))}


def run(models: int, trials: int, rows: int, holdout: int, significance: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, registry={"home": str(Path(tmp) / "bentoml")},
                                 store={"url": f"sqlite:///{Path(tmp) / 'bench.db'}"})
        margin = settings.retraining.margin
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        equal = _models(settings, "stable", models, rows, seed)
        picks = [rng.choice(models, 2, replace=False) for _ in range(trials)]
        out = {"kind": settings.model.kind, "rows": rows, "holdout": holdout, "margin": margin,
               "significance": significance,
               "equal": _rates([(equal[a], equal[b]) for a, b in picks], "stable", holdout, margin, significance,
                               seed + 10_000)}
        champion = fit(settings, _period("stable", 3000, seed - 1)).model()
        for world in ("covariate", "concept"):
            better = _models(settings, world, models, rows, seed + 20_000)
            pairs = [(champion, better[i % models]) for i in range(trials)]
            out[world] = _rates(pairs, world, holdout, margin, significance, seed + 30_000)
        out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--rows", type=int, default=750, help="training rows per model")
    parser.add_argument("--holdout", type=int, default=250, help="held-out rows per judgement")
    parser.add_argument("--significance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.models, args.trials, args.rows, args.holdout, args.significance, args.seed)
    print(f"gate on {out['kind']}: models on {out['rows']} rows, judged on {out['holdout']} held-out rows, "
          f"margin {out['margin']}, paired test at {out['significance']}")
    print(f"{'world':<10} {'trials':>6} {'mean gain':>9} {'promoted: margin only':>22} {'margin + test':>14}")
    for world in ("equal", "covariate", "concept"):
        r = out[world]
        print(f"{world:<10} {r['trials']:>6} {r['mean_gain']:>9.4f} {r['promoted_margin_only']:>22.3f} "
              f"{r['promoted_with_test']:>14.3f}")
    print(f"({out['seconds']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
