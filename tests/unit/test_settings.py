"""Settings: defaults < YAML file < DRIFTLOOP_* environment, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from driftloop.settings import Settings, load_settings
from driftloop.models.errors import ConfigError
from tests.conftest import make_settings
from driftloop.training import scenarios


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "driftloop.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_fill_the_built_in_scenario() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.data.path is None and s.data.scenario == "loans"
    assert s.features == scenarios.FEATURES
    assert s.data.target == scenarios.TARGET
    assert s.data.timestamp == scenarios.TIMESTAMP
    assert s.monitoring.window_rows == 500  # the documented default


def test_conftest_settings_live_under_tmp_path(settings, tmp_path: Path) -> None:  # noqa: ANN001
    assert Path(settings.registry.home) == tmp_path / "bentoml"
    assert settings.store.url == f"sqlite:///{tmp_path / 'driftloop.db'}"
    assert settings.monitoring.metrics_port == 0
    assert settings.features == scenarios.FEATURES


def test_yaml_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, {"seed": 7, "monitoring": {"window_rows": 200, "dry_run": True},
                            "serving": {"port": 3123}})
    s = load_settings(path)
    assert s.seed == 7
    assert s.monitoring.window_rows == 200 and s.monitoring.dry_run is True
    assert s.serving.port == 3123
    assert s.monitoring.interval_s == 5.0  # untouched keys of a section keep their defaults
    assert s.features == scenarios.FEATURES


def test_env_overrides_file_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"monitoring": {"window_rows": 200, "interval_s": 3.0}})
    assert load_settings(path).monitoring.window_rows == 200
    monkeypatch.setenv("DRIFTLOOP_MONITORING__WINDOW_ROWS", "300")
    s = load_settings(path)
    assert s.monitoring.window_rows == 300  # env beats the file
    assert s.monitoring.interval_s == 3.0  # the file's other keys in the section survive
    assert load_settings().monitoring.window_rows == 300  # env beats the default


def test_env_top_level_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_SEED", "99")
    assert load_settings().seed == 99


def test_bad_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_MONITORING__WINDOW_ROWS", "lots")
    with pytest.raises(ConfigError, match=r"monitoring\.window_rows"):
        load_settings()


@pytest.mark.parametrize(("data", "key"), [
    ({"monitoring": {"windw": 100}}, "monitoring.windw"),
    ({"serving": {"port": 3000, "hosst": "x"}}, "serving.hosst"),
    ({"colour": "blue"}, "colour"),
])
def test_unknown_key_is_named(tmp_path: Path, data: dict, key: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"{key}: unknown key" in message
    assert str(path) in message


def test_unknown_key_in_overrides_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.windw: unknown key"):
        make_settings(tmp_path, monitoring={"windw": 3})


@pytest.mark.parametrize(("data", "line"), [
    ({"serving": {"log_flush_intervall_s": 0.1}},
     "serving.log_flush_intervall_s: unknown key (did you mean log_flush_interval_s?)"),
    ({"sed": 7}, "sed: unknown key (did you mean seed?)"),  # the top level
    ({"retraining": {"watch": {"looks": 2, "min_label": 10}}},  # a section in a section
     "retraining.watch.min_label: unknown key (did you mean min_labels?)"),
    ({"monitoring": {"drift": {"columns": {"age": {"methd": "ks"}}}}},  # through a mapping's values
     "monitoring.drift.columns.age.methd: unknown key (did you mean method?)"),
    ({"model": {"search": {"params": {"max_depth": [2]}, "fold": 3}}},  # an optional section
     "model.search.fold: unknown key (did you mean folds?)"),
    # The closest key of the key's own section, not of another: `window_rows` is monitoring's.
    ({"serving": {"window_rows": 100}}, "serving.window_rows: unknown key"),
])
def test_a_mistyped_key_gets_the_closest_key_of_its_section(tmp_path: Path, data: dict, line: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"\n  {line}\n" in f"{info.value}\n", str(info.value)


def test_a_key_like_none_of_its_section_gets_no_guess(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, {"colour": "blue"}))
    assert str(info.value).endswith("\n  colour: unknown key")


def test_a_mistyped_environment_variable_gets_the_same_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_SERVING__LOG_FLUSH_INTERVALL_S", "0.1")
    with pytest.raises(ConfigError, match=r"serving\.log_flush_intervall_s: unknown key \(did you mean "
                                          r"log_flush_interval_s\?\)"):
        load_settings()


@pytest.mark.parametrize(("data", "key"), [
    ({"monitoring": {"window_rows": "many"}}, "monitoring.window_rows"),
    ({"serving": {"port": 70000}}, "serving.port"),
    ({"monitoring": {"window_rows": 5}}, "monitoring.window_rows"),  # below its minimum of 10
    ({"task": "forecasting"}, "task"),
    ({"features": {"income": "text"}}, "features.income"),
])
def test_wrong_type_or_value_names_the_key(tmp_path: Path, data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert f"\n  {key}: " in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("text, says", [("serving: [1, 2\n", "expected ',' or ']'"),
                                         ("- a\n- b\n", "the file is not a mapping of keys")])
def test_a_file_that_is_not_a_yaml_mapping_is_one_config_error(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "driftloop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"invalid configuration in {path}: ") and says in str(err.value)
    assert "\n" not in str(err.value)


def test_data_path_without_features(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"path": str(tmp_path / "x.csv"), "target": "y"}})
    with pytest.raises(ConfigError, match="features") as info:
        load_settings(path)
    assert "at least one feature" in str(info.value)


def test_data_path_with_features_and_target(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"path": str(tmp_path / "x.csv"), "target": "y"},
                            "features": {"a": "numeric", "b": "categorical"}})
    s = load_settings(path)
    assert s.data.path == tmp_path / "x.csv"
    assert s.features == {"a": "numeric", "b": "categorical"} and s.data.target == "y"
    assert s.data.timestamp is None


def test_data_path_needs_a_target(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"path": "x.csv"}, "features": {"a": "numeric"}})
    with pytest.raises(ConfigError, match="data.target: required"):
        load_settings(path)


def test_target_listed_as_a_feature_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"path": "x.csv", "target": "y"},
                            "features": {"a": "numeric", "y": "numeric"}})
    with pytest.raises(ConfigError, match="the target 'y' cannot also be a feature"):
        load_settings(path)


def test_scenario_target_listed_as_a_feature_is_refused() -> None:
    with pytest.raises(ConfigError, match=f"the target '{scenarios.TARGET}' cannot also be a feature"):
        load_settings(None, features={"income": "numeric", scenarios.TARGET: "numeric"})


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.scenario: unknown scenario 'moon'"):
        load_settings(None, data={"scenario": "moon"})


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(("cron", "says"), [("0 3 * *", "five fields"), ("0 3 * * 0", "weekdays by name"),
                                             ("61 3 * * sun", "retraining.schedule.cron"),
                                             ("0 3 1 * mon", "either matches")])
def test_a_bad_retraining_schedule_is_refused_when_the_config_loads(cron: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(None, retraining={"schedule": {"enabled": True, "cron": cron}})
    with pytest.raises(ConfigError, match="exactly one of interval_s and cron"):
        load_settings(None, retraining={"schedule": {"enabled": True}})
    assert load_settings(None, retraining={"schedule": {"enabled": True, "cron": "0 3 * * sun"}}).retraining.schedule.cron


def test_a_tournament_that_cannot_run_is_refused_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="retraining.tournament.kinds: cnn takes exactly one image feature"):
        load_settings(None, retraining={"tournament": {"enabled": True, "kinds": ["gradient_boosting", "cnn"]}})
    with pytest.raises(ConfigError, match="retraining.tournament.enabled: a tournament scores candidates on labels"):
        load_settings(None, task="clustering", model={"kind": "kmeans"}, data={"target": None},
                      retraining={"tournament": {"enabled": True}})
    with pytest.raises(ConfigError, match="retraining.tournament.kinds: unknown kinds"):
        load_settings(None, retraining={"tournament": {"enabled": True, "kinds": ["nope"]}})
    ok = load_settings(None, retraining={"tournament": {"enabled": True, "kinds": ["gradient_boosting", "mlp"]}})
    assert ok.retraining.tournament.kinds == ["gradient_boosting", "mlp"]


def test_retention_defaults_are_bounded_and_zero_or_null_switches_a_limit_off(tmp_path: Path) -> None:
    r = load_settings().monitoring.retention
    days = (r.predictions_days, r.checks_days, r.events_days, r.reports_days, r.snapshots_days)
    assert days == (30, 365, 365, 30, 30)
    assert (r.reports_max, r.snapshots_max, r.interval_s, r.archive_dir) == (200, 3000, 3600, None)
    path = write(tmp_path, {"monitoring": {"retention": {"predictions_days": 0, "checks_max": None, "reports_max": 0,
                                                         "archive_dir": "var/archive"}}})
    r = load_settings(path).monitoring.retention
    assert (r.predictions_days, r.checks_max, r.reports_max, r.archive_dir) == (None, None, None, Path("var/archive"))
    with pytest.raises(ConfigError, match="monitoring.retention.events_days: Input should be greater than or equal"):
        load_settings(write(tmp_path, {"monitoring": {"retention": {"events_days": -1}}}))
