"""The retraining policy: a small pure object, tested without any scheduler.

Feed it one :class:`WindowStats` per monitoring window with :meth:`RetrainPolicy.update`; read
the returned :class:`PolicyDecision` (its ``action``: a :class:`~driftloop.vocabulary.Decision`).
A window is *flagged* for drift when the share of drifted features reaches ``drift_share``, and
for decay when enough labels show accuracy below the champion's holdout accuracy by more than
``max_accuracy_drop`` *and* significantly so (a one-sided z-test on both samples, ``decay_z``).
A regressor's window decays when its RMSE exceeds the champion's expected RMSE by more than
``max_error_rise`` (0.10: 10% above) *and* significantly so (a one-sided z-test on the mean
squared error: the window's squared errors against the baseline's, each with its own spread;
without the baseline's spread, versions trained before it was recorded, the baseline counts as
exact). The caller measures accuracy (or the errors) on the rows the champion itself answered:
an earlier model's decay is no reason to replace the new one. ``consecutive`` flagged windows in
a row trigger a retrain, unless a cool-down is running (after a promotion) or the policy is in
dry-run mode (then it only alerts). The caller reports what came of a retrain with
:meth:`retrained`; a retrain that could not start (too few labels) keeps the streak alive.

The champion's expected accuracy is its holdout figure pooled with the live accuracy of its
first ``calibration_windows`` quiet windows (no signal), when the caller names the champion
(``WindowStats.champion``); a regressor's expected squared error (its mean and spread) is pooled
the same way with those windows' squared errors (:func:`pool`). A validation set of a few
hundred rows can be off by a few points, and the decay test measures the drop from it: in
bench/policy.py a first model validated at 0.787 served at 0.815, so a concept change to
0.72-0.74 stayed under "0.05 below" for three windows (detected 3 windows late; one episode
never). Calibration stops after those windows, so a slow drift cannot drag the baseline down
with it; a new champion starts again.

Before labels land, a classifier's decay can be *suspected* from its calibrated confidence
(``WindowStats.estimated_accuracy``, confidence-based performance estimation: the mean chance of
being right that the champion's validation rows give each row's top-class probability). The
estimate is compared with the accuracy on those same validation rows (``estimated_baseline``),
the scale it was learnt on, and a drop of more than ``max_accuracy_drop`` is a suspicion: the
decision is ``suspect`` when nothing else fires, and the reason of a later decision says whether
the labels confirmed it. A suspicion never retrains by itself: covariate shift is what the
estimate sees, and the drift test sees that too; a change of concept leaves confidence as it was.
A regressor states no confidence: its decay is seen once labels land, not before.

Windows that do not mistake order for drift. Rows often arrive grouped: sorted by a key that
follows a sub-population (a survey by year and record id, a batch of one region's applications),
so consecutive 500-row windows come from different parts of the population the champion learnt.
Each such window looks drifted to a per-window test, and a block of harder rows has a lower
accuracy than the average the baseline is. Retraining on such a block teaches a model that block
only, which then serves the next one worse (bench/policy.py ``grouped``: 15 retrains and 3
promotions on a stable concept, 1 point below never retraining). Two rules keep order from
being read as change (``PolicyConfig.explain_by_confidence``, ``labels_overrule_drift``):

- *a drop the champion's own confidence predicts is not decay*: a classifier's expected accuracy
  for a window is its baseline lowered by how much lower the calibrated confidence estimate of
  the window's rows is than on its validation rows (the estimate's own scale; isotonic
  calibration keeps the mean, so on validation-like rows the two agree). Harder rows of a
  sub-population it learnt lower the estimate and the accuracy together; a change of concept
  leaves confidence where it was while accuracy falls, and is decay. Only on familiar rows: where
  more than ``max_unfamiliar`` (2%) of the window's rows lie outside the champion's training
  ranges or categories (``WindowStats.unfamiliar``; about 0.3% by chance with 4 numeric features
  and 3,000 training rows), the model extrapolates, its confidence was never calibrated there,
  and the drop counts in full (bench/policy.py ``covariate``: a segment partly younger than any
  applicant the first model saw lowers its confidence too, yet a retrain gains 10 points);
- *labels overrule drift*: a window whose inputs drifted, but whose ``min_labels`` or more
  labelled rows show no decay, is ``held``: the champion demonstrably holds on those inputs, and
  a retrain would learn a stretch of the population, not a change. Drift alone still counts in
  windows without enough labels (labels late or absent), where it is the only early signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from driftloop.vocabulary import Decision, Signal


@dataclass(frozen=True)
class PolicyConfig:
    drift_share: float = 0.5
    max_accuracy_drop: float = 0.05
    max_error_rise: float = 0.10  # regression: RMSE above expected * (1 + this) decays (when significant)
    min_labels: int = 100
    consecutive: int = 2
    cooldown_windows: int = 2
    dry_run: bool = False
    decay_z: float = 2.33  # one-sided z of the accuracy drop (2.33: p < 0.01)
    calibration_windows: int = 4  # a new champion's first quiet windows whose accuracy joins its baseline
    explain_by_confidence: bool = True  # a drop its calibrated confidence predicts for these rows is no decay
    max_unfamiliar: float = 0.02  # ...on rows it knows: at most this share outside its training ranges
    labels_overrule_drift: bool = True  # drifted inputs with min_labels labels and no decay: held, no retrain


@dataclass(frozen=True)
class WindowStats:
    window: int
    rows: int
    drift_share: float
    labelled: int = 0
    accuracy: float | None = None
    baseline_accuracy: float | None = None  # the champion's holdout accuracy
    baseline_rows: int | None = None  # rows behind it: when known, the drop must also be significant
    champion: str | None = None  # the version judged: when given, its live accuracy calibrates the baseline
    estimated_accuracy: float | None = None  # from the champion's calibrated confidence, before labels
    estimated_baseline: float | None = None  # the champion's validation accuracy: the estimate's own scale
    # Regression, on the champion's labelled rows: the mean squared error and the squared errors'
    # standard deviation; and the champion's expected ones (validation, pooled with the gate's
    # holdout; the spread None: unknown, the baseline counts as exact). ``baseline_rows`` is theirs.
    mse: float | None = None
    mse_std: float | None = None
    baseline_mse: float | None = None
    baseline_mse_std: float | None = None
    unfamiliar: float | None = None  # share of the champion's rows outside its training ranges (None: unknown)


class Sample(NamedTuple):
    """A per-row figure over ``rows`` rows, summarised: its ``mean`` and standard deviation ``std``
    (None: unknown). Classification's is being right (1 or 0: the mean is the accuracy),
    regression's the squared error (the mean is the MSE)."""

    rows: int
    mean: float
    std: float | None = None


def pool(*samples: Sample) -> Sample:
    """Samples of the same figure as one: the champion's baseline with its live windows, the
    validation rows with the gate's holdout. Its spread is unknown if any part's is."""
    rows = sum(s.rows for s in samples)
    mean = sum(s.rows * s.mean for s in samples) / rows
    if any(s.std is None for s in samples):
        return Sample(rows, mean)
    second = sum(s.rows * (s.std ** 2 + s.mean ** 2) for s in samples) / rows  # type: ignore[operator]
    return Sample(rows, mean, math.sqrt(max(second - mean ** 2, 0.0)))


@dataclass(frozen=True)
class PolicyDecision:
    action: Decision
    reason: str
    signals: tuple[Signal, ...] = ()  # drift, decay
    since_window: int | None = None  # first window of the flagged streak: retrain on data from here


@dataclass
class RetrainPolicy:
    config: PolicyConfig = field(default_factory=PolicyConfig)
    _streak_start: int | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)
    _cooldown_until: int = field(default=-1, init=False)  # last window of the cool-down
    _calibrated: str | None = field(default=None, init=False)  # the champion the live tally is about
    _live: tuple[int, Sample | None] = field(default=(0, None), init=False)  # windows pooled, and their rows

    def baseline(self, stats: WindowStats) -> WindowStats:
        """``stats`` with the champion's baseline pooled with its calibrated live windows."""
        _, live = self._live
        if stats.champion is None or stats.champion != self._calibrated or live is None or stats.baseline_rows is None:
            return stats
        if stats.baseline_accuracy is not None:
            pooled = pool(Sample(stats.baseline_rows, stats.baseline_accuracy), live)
            return replace(stats, baseline_accuracy=pooled.mean, baseline_rows=pooled.rows)
        if stats.baseline_mse is not None:
            pooled = pool(Sample(stats.baseline_rows, stats.baseline_mse, stats.baseline_mse_std), live)
            return replace(stats, baseline_mse=pooled.mean, baseline_mse_std=pooled.std, baseline_rows=pooled.rows)
        return stats

    def _calibrate(self, stats: WindowStats) -> None:
        windows, live = self._live
        sample = self._sample(stats)
        if (stats.champion is not None and sample is not None and stats.labelled >= self.config.min_labels
                and windows < self.config.calibration_windows):
            self._live = (windows + 1, sample if live is None else pool(live, sample))

    @staticmethod
    def _sample(stats: WindowStats) -> Sample | None:
        """The window's labelled rows as a sample of the figure its baseline is made of."""
        if stats.accuracy is not None:
            return Sample(stats.labelled, stats.accuracy)
        if stats.mse is not None:
            return Sample(stats.labelled, stats.mse, stats.mse_std)
        return None

    def signals(self, stats: WindowStats) -> tuple[Signal, ...]:
        found = []
        if stats.drift_share >= self.config.drift_share:
            found.append(Signal.DRIFT)
        if self.decayed(stats):
            found.append(Signal.DECAY)
        return tuple(found)

    def decayed(self, stats: WindowStats) -> bool:
        """Enough labels, and accuracy below (RMSE above) the baseline by more than the allowance,
        significantly so."""
        if stats.labelled < self.config.min_labels:
            return False
        if stats.accuracy is not None and stats.baseline_accuracy is not None:
            stats = self.expected(stats)
            return (stats.accuracy < stats.baseline_accuracy - self.config.max_accuracy_drop
                    and self.drop_z(stats) >= self.config.decay_z)
        if stats.mse is not None and stats.baseline_mse is not None:
            return (math.sqrt(stats.mse) > math.sqrt(stats.baseline_mse) * (1 + self.config.max_error_rise)
                    and self.rise_z(stats) >= self.config.decay_z)
        return False

    def expected(self, stats: WindowStats) -> WindowStats:
        """``stats`` with a classifier's baseline lowered by what its confidence predicts for the
        window's rows (the estimate's drop below its validation accuracy; never raised), when
        ``explain_by_confidence``, the champion's confidence is calibrated and the rows are
        familiar (at most ``max_unfamiliar`` outside its training ranges or categories: beyond
        them a model extrapolates, and what its confidence says was never calibrated)."""
        if (not self.config.explain_by_confidence or stats.baseline_accuracy is None
                or stats.estimated_accuracy is None or stats.estimated_baseline is None
                or stats.unfamiliar is None or stats.unfamiliar > self.config.max_unfamiliar):
            return stats
        harder = min(0.0, stats.estimated_accuracy - stats.estimated_baseline)
        return replace(stats, baseline_accuracy=stats.baseline_accuracy + harder)

    def held(self, stats: WindowStats, signals: tuple[Signal, ...]) -> bool:
        """Drifted inputs, but enough of the champion's labels and no decay on them (see the module
        docstring): the window counts toward no retrain."""
        return (self.config.labels_overrule_drift and signals == (Signal.DRIFT,)
                and stats.labelled >= self.config.min_labels
                and (stats.accuracy is not None or stats.mse is not None))

    @staticmethod
    def drop_z(stats: WindowStats) -> float:
        """How many standard errors the window's accuracy lies below the baseline.

        Both are proportions on finite samples (a small validation set is noisy too), so the
        error combines both; without ``baseline_rows`` the baseline counts as exact.
        """
        if stats.baseline_rows is None:
            return math.inf
        a, b = stats.accuracy or 0.0, stats.baseline_accuracy or 0.0
        var = a * (1 - a) / max(stats.labelled, 1) + b * (1 - b) / max(stats.baseline_rows, 1)
        return (b - a) / math.sqrt(var) if var > 0 else (math.inf if b > a else 0.0)

    @staticmethod
    def rise_z(stats: WindowStats) -> float:
        """How many standard errors the window's mean squared error lies above the baseline's.

        Each mean's standard error is its squared errors' spread over the root of its rows; a
        baseline whose spread (or rows) is unknown counts as exact, and so does a window's. With
        ``min_labels`` rows or more the means are near normal, skewed as squared errors are.
        """
        gap = (stats.mse or 0.0) - (stats.baseline_mse or 0.0)
        var = (stats.mse_std or 0.0) ** 2 / max(stats.labelled, 1)
        if stats.baseline_mse_std is not None and stats.baseline_rows:
            var += stats.baseline_mse_std ** 2 / stats.baseline_rows
        return gap / math.sqrt(var) if var > 0 else (math.inf if gap > 0 else 0.0)

    def suspected(self, stats: WindowStats) -> bool:
        """Whether the confidence-based estimate lies more than ``max_accuracy_drop`` below its baseline."""
        return (stats.estimated_accuracy is not None and stats.estimated_baseline is not None
                and stats.estimated_accuracy < stats.estimated_baseline - self.config.max_accuracy_drop)

    def update(self, stats: WindowStats) -> PolicyDecision:
        if stats.champion != self._calibrated:  # a new champion: calibrate it afresh
            self._calibrated, self._live = stats.champion, (0, None)
        stats = self.baseline(stats)
        signals = self.signals(stats)
        suspicion = self._suspicion(stats, signals)
        if self.held(stats, signals):
            self._streak, self._streak_start = 0, None
            return PolicyDecision(Decision.HELD, f"{self._describe(stats, signals)}, but {self._holds(stats)}",
                                  signals)
        if not signals:
            self._streak, self._streak_start = 0, None
            self._calibrate(stats)
            if suspicion and stats.labelled < self.config.min_labels:
                return PolicyDecision(Decision.SUSPECT, f"{suspicion}; {stats.labelled} of "
                                                        f"{self.config.min_labels} labels to confirm it")
            return PolicyDecision(Decision.NONE, "no drift, no decay" + (f"; {suspicion}" if suspicion else ""))
        if self._streak == 0:
            self._streak_start = stats.window
        self._streak += 1
        why = self._describe(stats, signals) + (f"; {suspicion}" if suspicion else "")
        if stats.window <= self._cooldown_until:
            return PolicyDecision(Decision.COOLDOWN, f"{why}; cooling down until window {self._cooldown_until}",
                                  signals, self._streak_start)
        if self._streak < self.config.consecutive:
            return PolicyDecision(Decision.WATCH,
                                  f"{why}; {self._streak} of {self.config.consecutive} windows in a row",
                                  signals, self._streak_start)
        if self.config.dry_run:
            return PolicyDecision(Decision.ALERT, f"{why} for {self._streak} windows (dry run: no retrain)",
                                  signals, self._streak_start)
        return PolicyDecision(Decision.RETRAIN, f"{why} for {self._streak} windows", signals, self._streak_start)

    def retrained(self, window: int) -> None:
        """A retrain ran at ``window`` (promoted or rejected): restart the streak, cool down."""
        self._streak, self._streak_start = 0, None
        self._cooldown_until = window + self.config.cooldown_windows

    def _suspicion(self, stats: WindowStats, signals: tuple[Signal, ...]) -> str:
        """What the estimate says, and what the labels made of it; "" when nothing is suspected."""
        if not self.suspected(stats):
            return ""
        said = (f"accuracy estimated from confidence {stats.estimated_accuracy:.3f} < "
                f"{stats.estimated_baseline:.3f} - {self.config.max_accuracy_drop:.3f}")
        if stats.labelled < self.config.min_labels or stats.accuracy is None:
            return f"decay suspected: {said}"
        verdict = "confirmed" if Signal.DECAY in signals else "not confirmed"
        return f"decay suspected ({said}), {verdict} by {stats.labelled} labels (accuracy {stats.accuracy:.3f})"

    def _holds(self, stats: WindowStats) -> str:
        """Why a held window's labels say the champion holds."""
        if stats.accuracy is None:
            return (f"the champion's {stats.labelled} labels show no decay (rmse {math.sqrt(stats.mse or 0.0):.4g}, "
                    f"expected {math.sqrt(stats.baseline_mse or 0.0):.4g}): no retrain")
        expected = self.expected(stats).baseline_accuracy or 0.0
        explained = (f", {stats.baseline_accuracy - expected:.3f} lower for these rows by its confidence"
                     if expected < (stats.baseline_accuracy or 0.0) else "")
        return (f"the champion's {stats.labelled} labels show no decay (accuracy {stats.accuracy:.3f}, expected "
                f"{expected:.3f}{explained}): no retrain")

    def _describe(self, stats: WindowStats, signals: tuple[Signal, ...]) -> str:
        parts = []
        if Signal.DRIFT in signals:
            parts.append(f"drift share {stats.drift_share:.2f} >= {self.config.drift_share:.2f}")
        if Signal.DECAY in signals and stats.accuracy is not None:
            expected = self.expected(stats).baseline_accuracy or 0.0
            parts.append(f"accuracy {stats.accuracy:.3f} < {expected:.3f} - "
                         f"{self.config.max_accuracy_drop:.3f} on {stats.labelled} labels")
        elif Signal.DECAY in signals:
            parts.append(f"rmse {math.sqrt(stats.mse or 0.0):.4g} > {math.sqrt(stats.baseline_mse or 0.0):.4g} * "
                         f"{1 + self.config.max_error_rise:.2f} on {stats.labelled} labels (z {self.rise_z(stats):.1f})")
        return " and ".join(parts)
