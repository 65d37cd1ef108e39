import pytest
from helicone_core.settings import CommonSettings
from pydantic import ValidationError


@pytest.mark.parametrize("region", ["", "eu-west-1", "us-east-2", "local", "a" * 32])
def test_region_accepts_empty_or_short_plain_names(region):
    assert CommonSettings(region=region, _env_file=None).region == region


def test_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("HELICONE_REGION", "ap-south-1")
    assert CommonSettings(_env_file=None).region == "ap-south-1"


@pytest.mark.parametrize("region", ["EU-West-1", "eu west 1", "eu_west_1", "a" * 33, "eu-west-1\n", "région"])
def test_an_invalid_region_is_a_clear_settings_error(region, monkeypatch):
    monkeypatch.setenv("HELICONE_REGION", region)
    with pytest.raises(ValidationError) as info:
        CommonSettings(_env_file=None)
    [error] = info.value.errors()
    assert error["loc"] == ("region",)
    assert "HELICONE_REGION" in error["msg"] and "lower-case letters, digits and '-'" in error["msg"]


@pytest.mark.parametrize("database", ["helicone-prod", "1helicone", "helicone.prod", "", "helicone prod", "`x`"])
def test_a_clickhouse_database_that_is_not_a_plain_identifier_is_a_clear_settings_error(database, monkeypatch):
    """The database name is written into every statement unquoted: a name ClickHouse would need quoted is refused
    when the settings are read, naming the variable, not later as "invalid identifier" from the analytics store."""
    monkeypatch.setenv("HELICONE_CLICKHOUSE_DATABASE", database)
    with pytest.raises(ValidationError) as info:
        CommonSettings(_env_file=None)
    [error] = info.value.errors()
    assert error["loc"] == ("clickhouse_database",)
    assert "HELICONE_CLICKHOUSE_DATABASE" in error["msg"] and "letters, digits and '_'" in error["msg"]


@pytest.mark.parametrize("database", ["helicone", "helicone_prod", "_h2", "Helicone"])
def test_a_plain_clickhouse_database_name_is_accepted(database):
    assert CommonSettings(clickhouse_database=database, _env_file=None).clickhouse_database == database


@pytest.mark.parametrize(("value", "days"), [(None, 0), ("0", 0), ("1", 1), ("30", 30), ("3650", 3650)])
def test_retention_is_kept_forever_by_default_or_a_number_of_days(value, days, monkeypatch):
    if value is not None:
        monkeypatch.setenv("HELICONE_RETENTION_DAYS", value)
    assert CommonSettings(_env_file=None).retention_days == days


@pytest.mark.parametrize(("value", "accepted"), [("-1", "0 (keep every request forever) or a number of days from 1 to 3650"),
                                                 ("3651", "0 (keep every request forever) or a number of days from 1 to 3650"),
                                                 ("30d", "valid integer"), ("1.5", "valid integer")])
def test_an_invalid_retention_is_a_settings_error_naming_the_variable(value, accepted, monkeypatch):
    from helicone_core.settings import describe_settings_error

    monkeypatch.setenv("HELICONE_RETENTION_DAYS", value)
    with pytest.raises(ValidationError) as info:
        CommonSettings(_env_file=None)
    [error] = info.value.errors()
    assert error["loc"] == ("retention_days",)
    message = describe_settings_error(info.value)
    assert message.startswith("HELICONE_RETENTION_DAYS") and accepted in message
