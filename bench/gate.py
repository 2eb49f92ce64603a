"""The retrain gate on real models: how often it promotes a candidate that is no better, and how
often it promotes one that is.

    .venv/bin/python -m bench.gate [--models 16] [--trials 300] [--holdout 250] [--tournament N] [--json PATH]

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

``--tournament N`` (``retraining.tournament``) also sends the best of several candidates, picked on
the held-out rows they are then judged on, to the gate at ``significance / N`` (Bonferroni):

- **equal**: a champion and ``N`` other models of the equal pool (independent candidates, the case
  where Bonferroni is tightest), one held-out draw per trial;
- **covariate** and **concept**: the strategies' candidates on the same post-change rows,
  ``window`` (those rows) and ``window_and_original`` (those rows and the champion's 3,000), so N
  is 2 there, against the single ``window`` candidate (the default strategy).

Each against one candidate (the first) at ``--significance``; the winner is also shown tested at
``--significance`` uncorrected (what the pick costs unpaid) and at ``1 / N`` (a tournament under
the default ``significance`` 1.0, no test). Figures are printed; nothing is asserted.
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


def _tournament_rates(trials: list[tuple[OnnxModel, list[OnnxModel]]], world: str, holdout: int, margin: float,
                      significance: float, seed: int) -> dict[str, Any]:
    """Per trial, each candidate against the champion on one held-out draw; the first alone, and
    the best by accuracy on that draw (the first listed on a tie), as ``training.retrain`` picks."""
    target, n = scenarios.TARGET, len(trials[0][1])
    counts = dict.fromkeys(("single_margin_only", "single_with_test", "best_margin_only", "best_with_test_uncorrected",
                            "best_with_test", "best_margin_and_one_over_n"), 0)
    gains, picks = [], [0] * n
    for i, (champion, candidates) in enumerate(trials):
        rows = _period(world, holdout, seed + i)
        served = champion.predict_frame(rows).predictions
        judged = [compare("classification", rows[target], served, c.predict_frame(rows).predictions, margin=margin,
                          significance=significance) for c in candidates]
        best = max(range(n), key=lambda k: (judged[k].candidate, -k))
        single, winner = judged[0], judged[best]
        counts["single_margin_only"] += single.margin_passed
        counts["single_with_test"] += single.passed
        counts["best_margin_only"] += winner.margin_passed
        counts["best_with_test_uncorrected"] += winner.passed
        counts["best_with_test"] += winner.margin_passed and winner.p_value <= significance / n
        counts["best_margin_and_one_over_n"] += winner.margin_passed and winner.p_value <= 1.0 / n
        gains.append(winner.gain)
        picks[best] += 1
    return {"trials": len(trials), "candidates": n, **{k: v / len(trials) for k, v in counts.items()},
            "mean_gain_best": float(np.mean(gains)), "picked": [p / len(trials) for p in picks]}


def _tournament(settings: Any, equal: list[OnnxModel], champion: OnnxModel, initial: Any, candidates: int,
                trials: int, rows: int, holdout: int, significance: float, seed: int) -> dict[str, Any]:
    margin, models = settings.retraining.margin, len(equal)
    if candidates < 2 or candidates >= models:
        raise SystemExit(f"--tournament: between 2 and --models - 1 ({models - 1}) candidates, got {candidates}")
    rng = np.random.default_rng(seed + 40_000)
    draws = [rng.choice(models, candidates + 1, replace=False) for _ in range(trials)]
    out: dict[str, Any] = {"equal": _tournament_rates([(equal[d[0]], [equal[k] for k in d[1:]]) for d in draws],
                                                      "stable", holdout, margin, significance, seed + 50_000)}
    for world in ("covariate", "concept"):  # the same post-change rows, with and without the original data
        windows = [_period(world, rows, seed + 20_000 + i) for i in range(models)]
        pairs = [(fit(settings, w).model(), fit(settings, w, base=initial).model()) for w in windows]
        out[world] = _tournament_rates([(champion, list(pairs[i % models])) for i in range(trials)], world, holdout,
                                       margin, significance, seed + 30_000)
    return out


def run(models: int, trials: int, rows: int, holdout: int, significance: float, seed: int,
        tournament: int = 0) -> dict[str, Any]:
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
        initial = _period("stable", 3000, seed - 1)
        champion = fit(settings, initial).model()
        for world in ("covariate", "concept"):
            better = _models(settings, world, models, rows, seed + 20_000)
            pairs = [(champion, better[i % models]) for i in range(trials)]
            out[world] = _rates(pairs, world, holdout, margin, significance, seed + 30_000)
        if tournament:
            out["tournament"] = _tournament(settings, equal, champion, initial, tournament, trials, rows, holdout,
                                            significance, seed)
        out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _print_tournament(figures: dict[str, Any], significance: float) -> None:
    print(f"\ntournament: the first candidate alone at {significance}, against the best of N on the same rows "
          f"(equal: N independent equal models; covariate, concept: window and window_and_original)")
    print(f"{'world':<10} {'N':>2} {'mean gain':>9} {'first: margin':>13} {'+ test':>7} {'best: margin':>12} "
          f"{'+ test':>7} {'+ test/N':>8} {'+ 1/N':>6}  picked")
    for world in ("equal", "covariate", "concept"):
        r = figures[world]
        print(f"{world:<10} {r['candidates']:>2} {r['mean_gain_best']:>9.4f} {r['single_margin_only']:>13.3f} "
              f"{r['single_with_test']:>7.3f} {r['best_margin_only']:>12.3f} {r['best_with_test_uncorrected']:>7.3f} "
              f"{r['best_with_test']:>8.3f} {r['best_margin_and_one_over_n']:>6.3f}  "
              f"{' '.join(f'{p:.2f}' for p in r['picked'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--rows", type=int, default=750, help="training rows per model")
    parser.add_argument("--holdout", type=int, default=250, help="held-out rows per judgement")
    parser.add_argument("--significance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tournament", type=int, default=0, metavar="N",
                        help="also the best of N equal candidates at significance / N (0: off)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.models, args.trials, args.rows, args.holdout, args.significance, args.seed, args.tournament)
    print(f"gate on {out['kind']}: models on {out['rows']} rows, judged on {out['holdout']} held-out rows, "
          f"margin {out['margin']}, paired test at {out['significance']}")
    print(f"{'world':<10} {'trials':>6} {'mean gain':>9} {'promoted: margin only':>22} {'margin + test':>14}")
    for world in ("equal", "covariate", "concept"):
        r = out[world]
        print(f"{world:<10} {r['trials']:>6} {r['mean_gain']:>9.4f} {r['promoted_margin_only']:>22.3f} "
              f"{r['promoted_with_test']:>14.3f}")
    if "tournament" in out:
        _print_tournament(out["tournament"], out["significance"])
    print(f"({out['seconds']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
