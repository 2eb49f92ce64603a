"""The feature schema: inference, persistence and the request boundary."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from driftloop.models.errors import DriftloopError, SchemaError
from driftloop.models.schema import Feature, FeatureSchema

KINDS = {"income": "numeric", "age": "numeric", "region": "categorical"}


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "income": [52000.5, 31000.0, 78000.25, 45000.0],
        "age": [30, 61, 19, 44],
        "region": ["west", "east", "north", "east"],
        "default": [0, 1, 0, 1],
    })


@pytest.fixture
def schema(frame: pd.DataFrame) -> FeatureSchema:
    return FeatureSchema.infer(frame, KINDS, task="classification", target="default", labels=(0, 1))


def good_row(**kw) -> dict:
    return {"income": 40000.0, "age": 33, "region": "east"} | kw


def test_infer_numeric_range_and_sorted_categories(schema: FeatureSchema, frame: pd.DataFrame) -> None:
    income, age, region = schema.features
    assert income == Feature("income", "numeric", min=31000.0, max=78000.25, median=income.median)
    assert income.median == float(frame["income"].median()) == 48500.25 and income.fill == income.median
    assert (age.min, age.max) == (19.0, 61.0) and isinstance(age.min, float)
    assert region.kind == "categorical" and region.categories == ("east", "north", "west")
    assert region.min is None and region.max is None
    assert schema.names == ["income", "age", "region"]
    assert schema.numeric == ["income", "age"] and schema.categorical == ["region"]
    assert schema.target == "default" and schema.labels == (0, 1) and schema.task == "classification"


def test_infer_on_the_scenario(loans: pd.DataFrame) -> None:
    from driftloop.training.scenarios import FEATURES, TARGET

    s = FeatureSchema.infer(loans, FEATURES, "classification", TARGET)
    by_name = {f.name: f for f in s.features}
    assert by_name["income"].min == loans["income"].min() and by_name["income"].max == loans["income"].max()
    assert by_name["region"].categories == tuple(sorted(loans["region"].unique()))


def test_infer_refuses_a_bad_kind_a_missing_column_and_non_numeric(frame: pd.DataFrame) -> None:
    with pytest.raises(SchemaError, match="kind"):
        FeatureSchema.infer(frame, {"income": "text"}, "classification", "default")
    with pytest.raises(SchemaError, match="'salary' is not a column"):
        FeatureSchema.infer(frame, {"salary": "numeric"}, "classification", "default")
    with pytest.raises(SchemaError, match="'region' is declared numeric"):
        FeatureSchema.infer(frame, {"region": "numeric"}, "classification", "default")


def test_dict_round_trip(schema: FeatureSchema) -> None:
    data = schema.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-safe
    assert data["features"][2]["categories"] == ["east", "north", "west"]
    again = FeatureSchema.from_dict(data)
    assert again == schema
    assert again.features[2].categories == ("east", "north", "west")
    custom = FeatureSchema(schema.features, task="regression", target="y")
    assert FeatureSchema.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert FeatureSchema.from_dict(custom.to_dict()) != schema  # task and target are kept
    assert FeatureSchema.from_dict(custom.to_dict()).validate_rows([good_row()])  # index rebuilt


def test_valid_request_gives_the_feeds(schema: FeatureSchema) -> None:
    rows = [good_row(), good_row(income=12, age=70.5, region="mars")]  # unseen category is allowed
    feeds = schema.validate_rows(rows)
    assert set(feeds) == {"income", "age", "region"}
    for name in ("income", "age"):
        assert feeds[name].dtype == np.float32 and feeds[name].shape == (2, 1)
    np.testing.assert_array_equal(feeds["income"][:, 0], np.array([40000.0, 12.0], dtype=np.float32))
    np.testing.assert_array_equal(feeds["age"][:, 0], np.array([33.0, 70.5], dtype=np.float32))
    assert feeds["region"].dtype == object and feeds["region"].shape == (2, 1)
    assert feeds["region"][:, 0].tolist() == ["east", "mars"]


def test_row_key_order_does_not_matter(schema: FeatureSchema) -> None:
    feeds = schema.validate_rows([{"region": "west", "age": 1, "income": 2}])
    assert feeds["income"][0, 0] == 2 and feeds["region"][0, 0] == "west"


def test_max_rows_is_allowed(schema: FeatureSchema) -> None:
    assert schema.validate_rows([good_row()] * 3, max_rows=3)["age"].shape == (3, 1)


def _error(schema: FeatureSchema, rows, **kw) -> SchemaError:  # noqa: ANN001
    with pytest.raises(SchemaError) as info:
        schema.validate_rows(rows, **kw)
    assert isinstance(info.value, DriftloopError)
    return info.value


@pytest.mark.parametrize(("rows", "field", "words"), [
    ({"income": 1}, "rows", "must be a list"),
    ("rows", "rows", "must be a list"),
    (None, "rows", "must be a list"),
    ([], "rows", "empty"),
    ([good_row(), ["not", "a", "dict"]], "rows[1]", "rows[1] must be an object"),
    ([good_row(), 5], "rows[1]", "rows[1] must be an object"),
    ([good_row(), {"income": 1.0, "region": "east"}], "rows[1].age", "missing feature 'age'"),
    ([good_row(), good_row(colour="red")], "rows[1].colour", "unknown field 'colour'"),
    ([good_row(), {"income": 1.0, "age": 2, "zone": "east"}], "rows[1].region", "missing feature 'region'"),
    ([good_row(), good_row(income="40000")], "rows[1].income", "must be a number, got str"),
    ([good_row(), good_row(age=True)], "rows[1].age", "must be a number, got bool"),
    ([good_row(), good_row(income=None)], "rows[1].income", "must be a finite number, got None"),
    ([good_row(), good_row(income=float("nan"))], "rows[1].income", "must be a finite number"),
    ([good_row(), good_row(age=float("inf"))], "rows[1].age", "must be a finite number"),
    ([good_row(), good_row(age=-math.inf)], "rows[1].age", "must be a finite number"),
    ([good_row(), good_row(region=3)], "rows[1].region", "must be a string category, got int"),
    ([good_row(), good_row(region=None)], "rows[1].region", "must be a string category"),
])
def test_invalid_rows_name_the_field(schema: FeatureSchema, rows, field: str, words: str) -> None:  # noqa: ANN001
    err = _error(schema, rows)
    assert err.field == field
    assert words in str(err)


def test_too_many_rows(schema: FeatureSchema) -> None:
    err = _error(schema, [good_row()] * 4, max_rows=3)
    assert err.field == "rows"
    assert "4 rows" in str(err) and "at most 3" in str(err)


def test_too_many_rows_by_default(schema: FeatureSchema) -> None:
    assert schema.validate_rows([good_row()] * 10_000)["income"].shape == (10_000, 1)
    err = _error(schema, [good_row()] * 10_001)
    assert err.field == "rows" and "at most 10000" in str(err)


def test_first_bad_row_is_reported(schema: FeatureSchema) -> None:
    rows = [good_row(), good_row(), good_row(income="x"), good_row(age="y")]
    assert _error(schema, rows).field == "rows[2].income"


def test_missing_values_policy_imputes_the_training_median_and_counts_it(schema: FeatureSchema) -> None:
    repairs: dict[str, int] = {}
    rows = [good_row(income=None), good_row(age=float("nan")), good_row(age=math.inf), good_row()]
    feeds = schema.validate_rows(rows, missing_values="impute", repairs=repairs)
    income, age = (f for f in schema.features if f.kind == "numeric")
    assert feeds["income"][0, 0] == np.float32(income.median) and feeds["income"][3, 0] == np.float32(40000.0)
    assert feeds["age"][1, 0] == feeds["age"][2, 0] == np.float32(age.median) != feeds["age"][0, 0]
    assert repairs == {"imputed:income": 1, "imputed:age": 2}
    assert _error(schema, [good_row(income="x")], missing_values="impute").field == "rows[0].income"  # still a type error


def test_unknown_category_policy(schema: FeatureSchema) -> None:
    repairs: dict[str, int] = {}
    feeds = schema.validate_rows([good_row(region="south"), good_row()], repairs=repairs)  # accept: the default
    assert feeds["region"][:, 0].tolist() == ["south", "east"] and repairs == {"unknown_category:region": 1}
    err = _error(schema, [good_row(), good_row(region="south")], unknown_category="reject")
    assert err.field == "rows[1].region" and "'south' is not a category seen in training" in str(err)


def test_a_schema_saved_before_medians_imputes_the_middle_of_the_range() -> None:
    old = FeatureSchema.from_dict({"task": "regression", "features": [
        {"name": "x", "kind": "numeric", "min": 2.0, "max": 6.0}]})
    assert old.features[0].median is None and old.features[0].fill == 4.0
    assert old.validate_rows([{"x": None}], missing_values="impute")["x"].tolist() == [[4.0]]


def test_rows_outside_what_training_saw_are_found_per_feature() -> None:
    import pandas as pd

    from driftloop.models.schema import Feature, FeatureSchema

    schema = FeatureSchema((Feature("age", "numeric", min=26.0, max=66.0), Feature("region", "categorical",
                                                                                    categories=("east", "north")),
                            Feature("income", "numeric")), task="classification", target="y")
    frame = pd.DataFrame({"age": [26.0, 18.5, 70.0, None, 40.0], "region": ["east", "west", "north", "north", None],
                          "income": [1.0, 2.0, 3.0, 4.0, 5.0]})
    outside = schema.outside_training(frame)
    assert set(outside) == {"age", "region"}  # income: no recorded range, nothing to say
    assert outside["age"].tolist() == [False, True, True, False, False]  # the bounds are inside; missing is not
    assert outside["region"].tolist() == [False, True, False, False, False]
    assert schema.outside_training(frame.drop(columns=["age", "region"])) == {}


def test_rows_outside_training_are_counted_by_side() -> None:
    """Below the minimum, above the maximum, an unseen category: each counted on its side; the
    bounds are inside; a missing value (None, NaN, a number that does not parse) on no side."""
    from driftloop.models.schema import ABOVE, BELOW, UNSEEN

    schema = FeatureSchema((Feature("age", "numeric", min=26.0, max=66.0),
                            Feature("region", "categorical", categories=("east", "north")),
                            Feature("income", "numeric"), Feature("tags", "categorical")),
                           task="classification", target="y")
    assert schema.training_sides == {"age": (BELOW, ABOVE), "region": (UNSEEN,)}  # no range, no categories: not judged
    frame = pd.DataFrame({
        "age": [26.0, 18.5, 66.0, 118.8, None, float("nan"), 70.0, 25.9, "n/a", 40.0],  # 118.8: 1.8x the maximum
        "region": ["east", "west", "north", "south", None, "west", float("nan"), "east", "north", "East"],
        "income": [1.0] * 10, "tags": ["a"] * 10})
    by_side = schema.outside_training_by_side(frame)
    assert by_side["age"][BELOW].tolist() == [False, True, False, False, False, False, False, True, False, False]
    assert by_side["age"][ABOVE].tolist() == [False, False, False, True, False, False, True, False, False, False]
    assert by_side["region"][UNSEEN].tolist() == [False, True, False, True, False, True, False, False, False, True]
    assert schema.outside_training_counts(frame) == {"age": {"rows": 10, "below": 2, "above": 2},
                                                     "region": {"rows": 10, "unseen": 4}}
    # the same rows as outside_training, which the sides only split
    assert schema.outside_training(frame)["age"].tolist() == (by_side["age"][BELOW] | by_side["age"][ABOVE]).tolist()
    assert schema.outside_training_counts(frame.iloc[:0]) == {"age": {"rows": 0, "below": 0, "above": 0},
                                                              "region": {"rows": 0, "unseen": 0}}
    assert schema.outside_training_counts(frame[["income"]]) == {}  # judged features absent: nothing to count


@pytest.mark.parametrize("policy", ["reject", "impute"])
@pytest.mark.parametrize(("value", "words"), [
    (1e39, "is 1e+39: outside the range of the model's 32-bit inputs"),
    (-3.5e38, "is -3.5e+38: outside the range"),
    (10 ** 400, "is an integer of 401 digits: outside the range"),
    (-(10 ** 5000), "is an integer of over 4300 digits"),  # no JSON parser sends one; a caller might
], ids=["1e39", "-3.5e38", "401 digits", "5001 digits"])
def test_numbers_beyond_float32_are_refused_whatever_the_missing_values_policy(schema: FeatureSchema, value,  # noqa: ANN001
                                                                               words: str, policy: str) -> None:
    err = _error(schema, [good_row(), good_row(income=value)], missing_values=policy)
    assert err.field == "rows[1].income" and words in str(err)


def test_the_float32_limits_themselves_are_taken(schema: FeatureSchema) -> None:
    top = float(np.finfo(np.float32).max)
    feeds = schema.validate_rows([good_row(income=top), good_row(income=-top), good_row(age=2 ** 100)])
    assert np.isfinite(feeds["income"]).all() and feeds["income"][1, 0] == -np.finfo(np.float32).max


@pytest.mark.parametrize(("region", "words"), [
    ("\ud800", "rows[0].region is not valid Unicode text: it holds a lone surrogate"),
    ("east\udfff", "lone surrogate"),
    ("e" * 11, "rows[0].region is 11 characters long; at most 10 (serving.max_string_chars)"),
])
def test_category_strings_that_are_too_long_or_not_unicode_are_refused(schema: FeatureSchema, region: str,
                                                                       words: str) -> None:
    for policy in ("accept", "reject"):
        err = _error(schema, [good_row(region=region)], unknown_category=policy, max_string_chars=10)
        assert err.field == "rows[0].region" and words in str(err)


def test_strings_up_to_the_cap_and_any_real_unicode_are_taken(schema: FeatureSchema) -> None:
    rows = [good_row(region="e" * 10), good_row(region="São Paulo😀")]
    assert schema.validate_rows(rows, max_string_chars=10)["region"][:, 0].tolist() == ["e" * 10, "São Paulo😀"]
    assert _error(schema, [good_row(region="e" * 1_001)]).field == "rows[0].region"  # 1,000 by default
