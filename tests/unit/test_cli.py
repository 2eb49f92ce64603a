"""The ``driftloop`` CLI with a user's own data: a CSV and a config file, no built-in scenario."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app

runner = CliRunner()
COMMANDS = [[], ["train"], ["serve"], ["monitor"], ["demo"], ["history"], ["models"], ["models", "list"],
            ["models", "show"], ["models", "promote"], ["models", "rollback"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "driftloop")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--help" in result.output


@pytest.fixture
def user_project(tmp_path: Path, loans: pd.DataFrame) -> Path:
    """A user's loan book as CSV (renamed columns, shuffled rows) and a config file for it."""
    book = loans[loans["period"] == "train"].rename(columns={"default": "defaulted", "applied_at": "when"})
    book = book.drop(columns=["period"]).sample(frac=1.0, random_state=1)
    book.to_csv(tmp_path / "loans.csv", index=False)
    config = {
        "data": {"path": str(tmp_path / "loans.csv"), "target": "defaulted", "timestamp": "when"},
        "features": {"income": "numeric", "debt_ratio": "numeric", "employment": "categorical"},
        "task": "classification",
        "model": {"kind": "random_forest", "params": {"n_estimators": 50, "max_depth": 6}},
        "registry": {"home": str(tmp_path / "bentoml"), "project": "my-loans"},
        "store": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "monitoring": {"reports_dir": str(tmp_path / "reports")},
    }
    path = tmp_path / "driftloop.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_train_registers_and_promotes_from_a_config(user_project: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(user_project)])
    assert result.exit_code == 0, result.output
    assert "registered my-loans:v1" in result.output and "champion: v1" in result.output

    listed = runner.invoke(app, ["models", "list", "-c", str(user_project)])
    assert listed.exit_code == 0 and "* v1" in listed.output and "random_forest" in listed.output

    shown = yaml.safe_load(runner.invoke(app, ["models", "show", "v1", "-c", str(user_project)]).output)
    assert [f["name"] for f in shown["schema"]["features"]] == ["income", "debt_ratio", "employment"]
    assert shown["params"] == {"n_estimators": 50, "max_depth": 6}
    assert shown["time_range"][0] < shown["time_range"][1]  # ordered by the timestamp column

    second = runner.invoke(app, ["train", "-c", str(user_project)])
    assert "my-loans:v2" in second.output and "champion" not in second.output  # no silent promotion
    assert runner.invoke(app, ["models", "promote", "v2", "-c", str(user_project)]).exit_code == 0
    back = runner.invoke(app, ["models", "rollback", "-c", str(user_project), "--reason", "test"])
    assert back.exit_code == 0 and "champion: v1" in back.output


def test_environment_overrides_the_file(user_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_MODEL__KIND", "gradient_boosting")
    monkeypatch.setenv("DRIFTLOOP_MODEL__PARAMS", '{"learning_rate": 0.2}')  # merged into the file's params
    result = runner.invoke(app, ["train", "-c", str(user_project)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(runner.invoke(app, ["models", "show", "v1", "-c", str(user_project)]).output)
    assert shown["kind"] == "gradient_boosting"
    assert shown["params"] == {"n_estimators": 50, "max_depth": 6, "learning_rate": 0.2}


def test_a_bad_config_fails_with_the_key_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  kind: gradient_boosting\n  depth: 3\nserving:\n  port: high\n")
    result = runner.invoke(app, ["train", "-c", str(path)])
    assert result.exit_code == 2
    assert "model.depth: unknown key" in result.output and "serving.port" in result.output


def test_parameters_the_model_does_not_take_are_named(user_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_MODEL__KIND", "logistic_regression")  # the file's max_depth is a forest's
    result = runner.invoke(app, ["train", "-c", str(user_project)])
    assert result.exit_code == 2 and "model.params" in result.output and "n_estimators" in result.output


def test_unknown_model_kind_is_named(user_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_MODEL__KIND", "xgboost")
    result = runner.invoke(app, ["train", "-c", str(user_project)])
    assert result.exit_code == 2 and "unknown kind 'xgboost'" in result.output


def test_monitor_once_with_nothing_to_check(user_project: Path) -> None:
    assert runner.invoke(app, ["train", "-c", str(user_project)]).exit_code == 0
    result = runner.invoke(app, ["monitor", "--once", "-c", str(user_project)])
    assert result.exit_code == 0 and "checked 0 window(s)" in result.output


def test_history_events_lead_with_what_a_retrain_was(user_project: Path) -> None:
    from driftloop.monitoring.store import PredictionStore

    store = PredictionStore(yaml.safe_load(user_project.read_text())["store"]["url"]).create()
    store.record_event("retrain_promoted", {"status": "promoted", "reason": "accuracy on the newest 300 rows " * 20,
                                            "candidate": "v3", "trigger": "follow_up", "series": 7, "step": 2,
                                            "labelled": 1200, "series_ended": None}, 6, "v3")
    store.close()
    result = runner.invoke(app, ["history", "--events", "-c", str(user_project)])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert " retrain_promoted     window=6 trigger=follow_up series=7 step=2 labelled=1200 candidate=v3 {" in line
    assert "series ended" not in line and '"status": "promoted"' in line


def test_history_shows_a_regressor_s_errors_where_a_classifier_s_accuracy_goes(tmp_path: Path,
                                                                                 user_project: Path) -> None:
    from driftloop.monitoring.store import PredictionStore
    from driftloop.vocabulary import Check, Decision

    def check(window: int, **figures: float | None) -> Check:
        return Check(window=window, first_id=1, last_id=500, rows=500, model_version="v1", reference_version="v1",
                     drift_share=0.0, drifted_features=[], feature_scores={}, labelled=420, accuracy=None,
                     champion_labelled=420, champion_accuracy=None, decision=Decision.WATCH,
                     reason="rmse 912.3 > 830 * 1.10 on 420 labels", **figures)

    config = yaml.safe_load(user_project.read_text()) | {"task": "regression"}
    config["store"] = {"url": f"sqlite:///{tmp_path / 'regression.sqlite'}"}
    regression = tmp_path / "regression.yaml"
    regression.write_text(yaml.safe_dump(config, sort_keys=False))
    store = PredictionStore(config["store"]["url"]).create()
    store.record_check(check(0, rmse=912.34, mae=700.06, champion_rmse=912.34, unfamiliar_share=0.018))
    store.record_check(check(1))  # no labels yet
    store.close()
    result = runner.invoke(app, ["history", "-c", str(regression)])
    assert result.exit_code == 0, result.output
    first, second = result.output.strip().splitlines()
    assert first.startswith("window    0 rows=500 drift=0.00 outside=1.8% rmse=912.3 mae=700.1 model=v1 watch")
    assert first.endswith("rmse 912.3 > 830 * 1.10 on 420 labels") and "acc=" not in first
    assert "rmse=- mae=- model=v1" in second
    classifier = PredictionStore(yaml.safe_load(user_project.read_text())["store"]["url"]).create()
    classifier.record_check(Check(**(check(0).to_dict() | {"accuracy": 0.75})))  # a classifier's project
    classifier.close()
    shown = runner.invoke(app, ["history", "-c", str(user_project)]).output
    assert "drift=0.00 outside=- acc=0.750 model=v1" in shown and "rmse=" not in shown


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"driftloop {version('driftloop')}"


def test_serve_on_a_port_in_use_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    notice, error = result.output.strip().splitlines()  # which defaults (no --config), then the one error line
    assert notice.startswith("no --config (nor DRIFTLOOP_CONFIG): the defaults, project 'loans'")
    assert error == (f"error: serving address 127.0.0.1:{port} is in use (another process listens "
                     "there): stop it, or choose another with --port or serving.port")


def test_third_party_routine_is_quiet_unless_verbose() -> None:
    import logging

    from driftloop.cli import QUIET_LOGGERS, _logging

    try:
        _logging()
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in QUIET_LOGGERS)
        assert not logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.INFO)
        _logging(verbose=True)
        assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.INFO)
    finally:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
