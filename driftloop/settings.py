"""One settings object for every driftloop process.

Precedence: ``DRIFTLOOP_*`` environment variables > the YAML config file > defaults. Nested keys
use ``__`` in the environment: ``DRIFTLOOP_MONITORING__WINDOW_ROWS=300``. Unknown keys and wrong
types are refused with a message naming the key (an unknown key close to one its section allows:
``serving.log_flush_intervall_s: unknown key (did you mean log_flush_interval_s?)``). Nothing
here runs at import time; call :func:`load_settings` in an entry point. Importing it imports no
learning library: ``model.kind`` is checked against :data:`driftloop.models.families.FAMILIES`,
which imports scikit-learn only to build an estimator.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from driftloop.models.errors import ConfigError

ENV_PREFIX = "DRIFTLOOP_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: Path | None = None  # CSV or Parquet; unset -> the built-in scenario
    scenario: str = "loans"
    target: str | None = None
    timestamp: str | None = None


class SearchConfig(_Section):
    params: dict[str, list[Any]]  # name -> values to try (merged over model.params)
    method: Literal["grid", "random"] = "grid"
    iterations: int = Field(10, ge=1)  # random search: combinations tried
    folds: int = Field(3, ge=2, le=20)  # scikit-learn kinds: cross-validation folds

    @field_validator("params")
    @classmethod
    def _not_empty(cls, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not params or any(not values for values in params.values()):
            raise ValueError("name at least one parameter, each with at least one value")
        return params


class ModelConfig(_Section):
    kind: str = "gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)
    warm_start: bool = False  # retraining fine-tunes the champion's weights (neural kinds)
    search: SearchConfig | None = None  # hyperparameter search before every fit

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from driftloop.models.families import FAMILIES

        if kind not in FAMILIES:
            raise ValueError(f"unknown kind {kind!r}; available: {sorted(FAMILIES)}")
        return kind

    @model_validator(mode="after")
    def _can_fine_tune(self) -> ModelConfig:
        from driftloop.models.families import FAMILIES

        family = FAMILIES[self.kind]
        if self.warm_start and not family.neural:
            raise ValueError(f"warm_start: {self.kind!r} cannot fine-tune; only neural kinds "
                             f"({sorted(k for k, f in FAMILIES.items() if f.neural)}) can")
        return self


class TrainingConfig(_Section):
    validation_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    reference_rows: int = Field(2000, ge=100)


class RegistryConfig(_Section):
    home: Path = Path("var/bentoml")  # BentoML's home: models live in <home>/models
    project: str = Field("loans", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # Retention, run by the monitor's scheduler: keep the champion, the last keep_ancestors
    # champions before it (rollbacks) and the keep_candidates newest other versions.
    keep_ancestors: int = Field(5, ge=0)
    keep_candidates: int = Field(10, ge=0)
    retention_interval_s: float = Field(86_400.0, ge=0.0)  # 0: never prune automatically


class StoreConfig(_Section):
    # SQLite (default) or PostgreSQL: postgresql://user:password@host:5432/db (psycopg 3); the
    # schema is migrated on start (Alembic). The password belongs in DRIFTLOOP_STORE__URL.
    url: str = "sqlite:///var/driftloop.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgres")):
            raise ValueError("a SQLite (sqlite:///path) or PostgreSQL (postgresql://...) URL")
        return url


class SchedulerConfig(_Section):
    # The active monitor's lease: renewed every lease_s / 3; a standby monitor takes over at most
    # lease_s (plus one poll) after the active one dies. Shorter: faster takeover, more writes.
    lease_s: float = Field(15.0, ge=1.0, le=3600.0)


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    poll_interval_s: float = Field(0.5, gt=0.0, le=60.0)  # how often workers look at the champion pointer
    max_rows: int = Field(1000, ge=1)  # rows per /predict request
    log_flush_interval_s: float = Field(0.2, gt=0.0, le=1.0)  # most a hard kill can lose
    log_queue_rows: int = Field(100_000, ge=100)  # bound on buffered prediction-log rows
    log_queue_bytes: int = Field(256 * 2**20, ge=2**20)  # ...and on their estimated memory, per worker
    access_log: bool = False  # BentoML's log line per request (metrics carry the same counts)
    tracing: bool = False  # OpenTelemetry spans per request (configure an exporter through BentoML)
    prediction_log: bool = True  # every predicted row into the store (the monitor needs it)
    metrics: bool = True  # driftloop's per-request metrics (predictions by class, batch sizes)
    # Where the graph runs. auto: onnxruntime's CUDA provider when it is installed and sees a GPU
    # (the `gpu` extra), else the CPU; cuda: refuse to start without one.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Load: a worker answers 503 + Retry-After at once, rather than queueing, once this many
    # requests are in flight in it; bodies larger than max_body_bytes get a 413.
    max_in_flight: int = Field(128, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # A body must arrive whole within body_timeout_s of the request's headers, else 408 and the
    # connection is closed (a client that declares more than it sends, or trickles); no
    # max_in_flight slot is held while it arrives. Raise it for slow clients with large bodies.
    body_timeout_s: float = Field(5.0, gt=0.0, le=300.0)
    # The longest string a request may carry in a category or a label (422 naming the field).
    max_string_chars: int = Field(1000, ge=1)
    # Adaptive batching: rows of concurrent requests run through the graph together (a batch
    # forms while the previous one runs; no fixed wait). auto: on for neural kinds.
    batching: Literal["auto", "on", "off"] = "auto"
    max_batch_rows: int = Field(512, ge=1)
    # Input policies. unknown_category: accept (the graph encodes it as no known category, and
    # it is counted) or reject (422). missing_values: reject null/NaN/inf in numeric features
    # (422), or impute the training median.
    unknown_category: Literal["accept", "reject"] = "accept"
    missing_values: Literal["reject", "impute"] = "reject"
    # SIGTERM: readiness fails and new requests get 503 for drain_s (load balancers notice),
    # then in-flight requests finish, the prediction log is flushed and the worker exits.
    drain_s: float = Field(2.0, ge=0.0, le=60.0)
    # Bearer tokens. Unset admin token: the admin endpoints are disabled. Unset predict token:
    # /predict and /feedback are open. Give them by environment, never in a file you commit:
    # DRIFTLOOP_SERVING__ADMIN_TOKEN, DRIFTLOOP_SERVING__PREDICT_TOKEN.
    admin_token: SecretStr | None = None
    predict_token: SecretStr | None = None

    @field_validator("admin_token", "predict_token")
    @classmethod
    def _strong(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None:
            value = token.get_secret_value()
            if value != value.strip():  # a client's bearer token is stripped: this one could never match
                raise ValueError("a token must not start or end with whitespace")
            if len(value) < 16 or value.lower() in ("changethis", "changeme", "secret", "token"):
                raise ValueError("a token must be at least 16 characters and not a placeholder")
        return token


class DriftMethod(_Section):
    # An Evidently stattest name (ks, wasserstein, psi, jensenshannon, chisquare, z, ...; checked
    # by the monitor's first drift check). Unset: Evidently's choice by column type and sample size.
    method: str | None = None
    threshold: float | None = Field(None, ge=0.0)  # unset: the method's default


class EmbeddingsMethod(_Section):
    # Evidently's embeddings drift methods. Unset: "model" (a classifier separating reference
    # from window rows; drift when its ROC AUC > 0.55, bootstrapped below 1,000 reference rows).
    method: Literal["model", "distance", "ratio", "mmd"] | None = None
    threshold: float | None = Field(None, ge=0.0)  # unset: the method's default
    bootstrap: bool | None = None  # model, distance, mmd: compare with a bootstrap percentile instead


class DriftConfig(_Section):
    numeric: DriftMethod = DriftMethod()  # numeric features and image/sequence summary columns
    categorical: DriftMethod = DriftMethod()
    prediction: DriftMethod = DriftMethod()  # the model's output column (prediction drift)
    columns: dict[str, DriftMethod] = Field(default_factory=dict)  # per column; overrides the above
    embeddings: EmbeddingsMethod = EmbeddingsMethod()  # image/sequence networks' embeddings


class WorkspaceConfig(_Section):
    # An Evidently workspace (`evidently ui --workspace <path>`): one project per model version,
    # one snapshot per checked window (all) or per flagged window only.
    enabled: bool = True
    path: Path | None = None  # unset: <monitoring.reports_dir>/evidently
    windows: Literal["all", "flagged"] = "all"


class RetentionConfig(_Section):
    # What grows is pruned by the monitor's `store_retention` job every interval_s (0: no job;
    # `driftloop db prune` by hand) and by `driftloop db prune` (monitoring/retention.py). Each
    # limit: 0 or null switches it off. Whatever the limits, what the monitor still needs stays:
    # unchecked rows, the newest keep_windows windows (at least consecutive, cooldown_windows + 1,
    # shadow.max_windows and watch.max_windows) with their rows and events, the flagged streak, a
    # pending retry, an open follow-up series, a pending request (README "Retention").
    interval_s: float = Field(3600.0, ge=0.0)
    predictions_days: float | None = Field(30.0, ge=0.0)  # the prediction log, with its feedback and shadow answers
    archive_dir: Path | None = None  # Parquet copies of those rows before they are deleted (unset: no copy)
    checks_days: float | None = Field(365.0, ge=0.0)
    checks_max: int | None = Field(500_000, ge=0)  # newest checks kept (one per window)
    events_days: float | None = Field(365.0, ge=0.0)
    events_max: int | None = Field(500_000, ge=0)
    keep_windows: int = Field(50, ge=1)
    reports_days: float | None = Field(30.0, ge=0.0)  # HTML reports in monitoring.reports_dir (~4 MB each)
    reports_max: int | None = Field(200, ge=0)
    snapshots_days: float | None = Field(30.0, ge=0.0)  # Evidently workspace snapshots (~320 KB each)
    snapshots_max: int | None = Field(3000, ge=0)
    batch_rows: int = Field(10_000, ge=100, le=1_000_000)  # ids (or windows) deleted per transaction

    @field_validator("predictions_days", "checks_days", "checks_max", "events_days", "events_max",
                     "reports_days", "reports_max", "snapshots_days", "snapshots_max")
    @classmethod
    def _zero_is_off(cls, value: float | int | None) -> float | int | None:
        return value or None  # 0 switches the limit off, as null does (never "keep nothing")


class MonitoringConfig(_Section):
    interval_s: float = Field(5.0, gt=0.0)
    window_rows: int = Field(500, ge=10)
    min_label_coverage: float = Field(0.8, ge=0.0, le=1.0)  # wait for this share of labels...
    label_wait_s: float = Field(600.0, ge=0.0)  # ...but no longer than this after the window closes
    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # share of drifted features that flags a window
    max_accuracy_drop: float = Field(0.05, gt=0.0, lt=1.0)  # below the champion's holdout accuracy
    # Regression: a window decays when its error (RMSE, the gate's metric) exceeds the champion's
    # expected error by more than this share (0.10: 10% above), significantly so (decay_z).
    max_error_rise: float = Field(0.10, gt=0.0)
    decay_z: float = Field(2.33, ge=0.0)  # and the drop must be significant (one-sided z; 2.33: p < 0.01)
    min_labels: int = Field(100, ge=1)  # labelled rows a window needs before its accuracy counts
    consecutive: int = Field(2, ge=1)  # flagged windows in a row before acting
    cooldown_windows: int = Field(2, ge=0)  # windows to wait after a promotion
    # A new champion's first quiet windows whose live accuracy joins its validation accuracy as
    # the baseline for decay (a 600-row validation estimate alone missed real drops; bench.policy)
    calibration_windows: int = Field(4, ge=0)
    # Windows that do not mistake arrival order for drift (monitoring/policy.py): a drop in accuracy
    # that the champion's calibrated confidence predicts for the window's rows is no decay; a window
    # whose inputs drifted but whose min_labels labels show no decay is `held` (no retrain).
    explain_by_confidence: bool = True
    max_unfamiliar: float = Field(0.02, ge=0.0, le=1.0)  # ...only where at most this share is outside training ranges
    labels_overrule_drift: bool = True
    # More full windows than this waiting (a monitor that was down): check only the newest this many,
    # the older ones are left unchecked, recorded as a backlog_skipped event (monitoring/backlog.py); 0: never
    max_backlog_windows: int = Field(120, ge=0)
    dry_run: bool = False  # alert, never retrain
    metrics_port: int = Field(9464, ge=0, le=65535)  # 0: no monitor /metrics endpoint
    metrics_host: str = "127.0.0.1"  # where it listens; 0.0.0.0 in a container, for Prometheus
    reports_dir: Path = Path("var/reports")
    drift: DriftConfig = DriftConfig()  # drift methods and thresholds (monitoring/drift.py)
    workspace: WorkspaceConfig = WorkspaceConfig()  # Evidently snapshots for `evidently ui`
    retention: RetentionConfig = RetentionConfig()  # what grows, pruned (monitoring/retention.py)


class GuardConfig(_Section):
    # The fixed guard set: labelled rows no version trains on. A candidate whose primary metric
    # on it is worse than the champion's by more than max_drop is rejected, whatever the holdout
    # says. path: your own file (CSV or Parquet: the features and the target), cases that must
    # stay right whatever the drift; or rows > 0: that many rows set aside from the initial data
    # at the first training. Off by default: rows of the old concept reject the right candidate
    # after a concept change (bench.policy: 10 of 21 targets with 500 rows, max_drop 0.02).
    # max_drop 0.04: about 2.4 standard deviations of equal models' difference on 500 rows.
    path: Path | None = None
    rows: int = Field(0, ge=0)
    max_drop: float = Field(0.04, ge=0.0)


class RetryConfig(_Section):
    # A retrain that raised, or whose process died, is tried again on the same rows: after
    # backoff_s, doubling after each failure up to max_backoff_s, at most `attempts` tries in all.
    attempts: int = Field(3, ge=1, le=20)
    backoff_s: float = Field(60.0, ge=0.0)
    max_backoff_s: float = Field(3600.0, ge=0.0)


class ShadowConfig(_Section):
    # A candidate that passes the gate is not promoted at once: the serving workers score live
    # traffic with it beside the champion (off the request path; the champion still answers),
    # and the monitor promotes or rejects it once min_labels of those rows have labels.
    enabled: bool = False
    min_labels: int = Field(300, ge=1)
    max_windows: int = Field(20, ge=1)  # checked windows to wait for them before rejecting it


class WatchConfig(_Section):
    # A watch after every promotion: the previous champion keeps scoring live rows beside the new
    # one (through the shadow pointer, off the request path). It looks `looks` times, when
    # min_labels, 2x, 4x, ... of those rows have labels: at each look the new champion is rolled
    # back if it is significantly worse than its predecessor on all of them (the gate's paired
    # test, roles reversed, at significance / looks: the chance of a false rollback over all the
    # looks stays under `significance`); after the last look it stays. It ends without a verdict
    # after max_windows checked windows. On by default (make bench-policy: no rollback of a right
    # model in nine scenarios; the safety net when the gate lets a worse model through).
    enabled: bool = True
    min_labels: int = Field(300, ge=1)
    looks: int = Field(4, ge=1, le=10)  # at min_labels * 2**k labelled rows, k = 0 .. looks - 1
    max_windows: int = Field(20, ge=1)
    significance: float = Field(0.05, gt=0.0, le=1.0)


class FollowUpConfig(_Section):
    # Follow-up retrains: after a change was answered by a promotion, retrain again on the
    # labelled rows since the change once there are `factor` times as many as the last retrain
    # learned from (2x, 4x, 8x, ...), up to max_rows; each is gated on its own (see tolerance
    # and stop_on_reject). On by default: make bench-policy,
    # 48-window post-change periods reach 99.9-100% of a 10,000-row oracle (97.4-96.7% without).
    enabled: bool = True
    factor: float = Field(2.0, gt=1.0)
    max_rows: int = Field(20_000, ge=100)
    # A follow-up learns more rows of the world its champion learnt: it is promoted when it scores
    # at least as well on the held-out rows and is not worse by this much (accuracy points, or a
    # share of the champion's MSE), significantly (a non-inferiority test at retraining.significance).
    # 0: the same gate as any retrain (better by the margin, significantly).
    tolerance: float = Field(0.01, ge=0.0, lt=1.0)
    stop_on_reject: bool = False  # a rejected follow-up ends the series (else the next waits for factor x its rows)


class ScheduleConfig(_Section):
    # Scheduled retraining: a `retrain` job of the monitor's scheduler (listed, paused and run
    # with `driftloop jobs`), every interval_s seconds or on a cron expression (five fields, UTC),
    # through the same data strategy and gate as any retrain (trigger `schedule`). Off by default.
    enabled: bool = False
    interval_s: float | None = Field(None, gt=0.0)
    cron: str | None = None
    rows: int = Field(5000, ge=20)  # the newest labelled rows it learns from

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleConfig:
        if self.enabled and (self.interval_s is None) == (self.cron is None):
            raise ValueError("retraining.schedule: set exactly one of interval_s and cron when enabled")
        if self.cron is not None:  # checked here, not when the monitor first builds the job
            from driftloop.adapters.apscheduler import crontab

            try:
                crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"retraining.schedule.cron: {exc}") from None
        return self


class TournamentConfig(_Section):
    # A retrain trains one candidate per strategy and per model kind listed here, scores them
    # all on the same held-out rows, and sends only the best to the gate; the gate's paired test
    # then runs at significance / number of candidates (Bonferroni). kinds empty: model.kind only.
    # On by default: window_and_original wins after a covariate shift, window after a concept
    # change (make bench-policy: covariate 0.762 -> 0.775 live accuracy; make bench-gate: 3.3%
    # false promotions at 0.05 / 2). Each retrain fits one model per candidate.
    enabled: bool = True
    strategies: list[Literal["window", "window_and_original", "reweighted"]] = Field(
        default_factory=lambda: ["window", "window_and_original"], min_length=1)
    kinds: list[str] = Field(default_factory=list)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        from driftloop.models.families import FAMILIES

        unknown = [k for k in kinds if k not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; available: {sorted(FAMILIES)}")
        return kinds


class RetrainingConfig(_Section):
    min_rows: int = Field(400, ge=20)  # labelled post-drift rows needed to train a candidate
    holdout_fraction: float = Field(0.25, gt=0.0, lt=0.9)  # newest share kept for the gate
    margin: float = Field(0.01, ge=0.0)  # the candidate must beat the champion by this much...
    # ...and significantly, on the same held-out rows: a one-sided paired test (McNemar's exact
    # test for classification, a paired t-test on squared errors for regression) at this level.
    # At 0.05 a no-better candidate is promoted 3% of the time against 34% by the margin alone
    # (make bench-gate); 1.0 switches the test off. The shadow judge applies the same rule to its
    # live rows; a follow-up is held to non-inferiority instead (follow_up.tolerance).
    significance: float = Field(0.05, gt=0.0, le=1.0)
    min_holdout_rows: int = Field(1, ge=1)  # fewer held-out labelled rows: the retrain waits for more
    # What a candidate learns from. window: the labelled rows since the drift began;
    # window_and_original: those plus the initial training data; reweighted: the initial data
    # weighted toward the live inputs (covariate shift, no labels needed); auto: window when
    # min_rows labels are there, reweighted for drift without them.
    strategy: Literal["window", "window_and_original", "reweighted", "auto"] = "window"
    max_weight: float = Field(20.0, gt=1.0)  # reweighted: importance weights are clipped to this
    guard: GuardConfig = GuardConfig()
    retry: RetryConfig = RetryConfig()
    shadow: ShadowConfig = ShadowConfig()
    watch: WatchConfig = WatchConfig()
    follow_up: FollowUpConfig = FollowUpConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    tournament: TournamentConfig = TournamentConfig()


FEATURE_KIND = Literal["numeric", "categorical", "image", "sequence"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid", frozen=True)

    seed: int = 42
    task: Literal["classification", "regression", "clustering", "anomaly"] = "classification"
    features: dict[str, FEATURE_KIND] = Field(default_factory=dict)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    store: StoreConfig = StoreConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    retraining: RetrainingConfig = RetrainingConfig()
    scheduler: SchedulerConfig = SchedulerConfig()

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        if self.data.path is None:  # the built-in scenario brings its own schema
            from driftloop.builtin import SCENARIO_COLUMNS

            scenario = SCENARIO_COLUMNS.get(self.data.scenario)
            if scenario is None:
                raise ValueError(f"data.scenario: unknown scenario {self.data.scenario!r}; "
                                 f"available: {sorted(SCENARIO_COLUMNS)}")
            updates: dict[str, Any] = {}
            if not self.features:
                updates["features"] = dict(scenario.features)
            if self.data.target is None:
                updates["data"] = self.data.model_copy(update={"target": scenario.target,
                                                               "timestamp": scenario.timestamp})
            for key, value in updates.items():
                object.__setattr__(self, key, value)
        if not self.features:
            raise ValueError("features: name at least one feature (name: numeric | categorical)")
        supervised = self.task in ("classification", "regression")
        if supervised and self.data.target is None:
            raise ValueError(f"data.target: required for task {self.task!r}")
        if self.retraining.strategy == "reweighted" and not supervised:
            raise ValueError(f"retraining.strategy: reweighted re-weights labelled rows; task {self.task!r} has none")
        if self.retraining.shadow.enabled and not supervised:
            raise ValueError(f"retraining.shadow.enabled: shadow mode judges a candidate on labels; "
                             f"task {self.task!r} has none")
        if self.data.target is not None and self.data.target in self.features:
            raise ValueError(f"features: the target {self.data.target!r} cannot also be a feature")
        self._check_tournament(supervised)
        return self

    def _check_tournament(self, supervised: bool) -> None:
        """A tournament judges candidates on labels, with kinds that can learn the features."""
        tournament = self.retraining.tournament
        if not tournament.enabled or (not supervised and "enabled" not in tournament.model_fields_set):
            return  # on by default: for tasks with labels
        if not supervised:
            raise ValueError(f"retraining.tournament.enabled: a tournament scores candidates on labels; "
                             f"task {self.task!r} has none")
        from driftloop.models.families import unfit

        for kind in tournament.kinds or [self.model.kind]:
            why = unfit(kind, self.task, dict(self.features))
            if why:
                raise ValueError(f"retraining.tournament.kinds: {why}")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML), the environment and defaults; :class:`ConfigError` if wrong."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=str(path) if path else None)

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # not YAML, or not a mapping at the top
        if path is None:
            raise
        what = " ".join(str(exc).split()) if isinstance(exc, yaml.YAMLError) else "the file is not a mapping of keys"
        raise ConfigError(f"invalid configuration in {path}: {what}") from None


def _explain(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(err["loc"])
        got = f" (got {err['input']!r})" if err["type"] not in ("extra_forbidden", "missing", "value_error") else ""
        lines.append(f"{key}: {msg}{got}")
    return f"invalid configuration{where}:\n  " + "\n  ".join(lines)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean <key>?)`` for the unknown key at ``loc`` when one of the keys its section
    allows is close to it (``serving.log_flush_intervall_s``: ``log_flush_interval_s``), else ``""``."""
    close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(loc[:-1]), n=1) if loc else []
    return f" (did you mean {close[0]}?)" if close else ""


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` (a path from the top of the settings through sections,
    a mapping's keys and a list's items: ``("monitoring", "drift", "columns", "age")``) allows;
    ``[]`` where ``loc`` leads to no section."""
    kind: Any = Settings
    for part in loc:
        kind = _without_none(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(part))
            if field is None:
                return []
            kind = field.annotation
        elif typing.get_origin(kind) is dict and typing.get_args(kind):
            kind = typing.get_args(kind)[1]  # a mapping's values
        elif typing.get_origin(kind) in (list, tuple) and typing.get_args(kind):
            kind = typing.get_args(kind)[0]  # a list's items
        else:
            return []
    kind = _without_none(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _without_none(kind: Any) -> Any:
    """``kind`` without ``| None`` (an optional section is the section)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return options[0] if len(options) == 1 else kind
    return kind
