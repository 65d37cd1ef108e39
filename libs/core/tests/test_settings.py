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


# unencoded '@' and ':' / '@' / '/' / '#' in the password: asyncpg ends the user info at the first '@' and the
# host at the first '/', so the rest of the password became the host (looked up in DNS) or a port (echoed back as
# "invalid literal for int() ... 'Pw99@127.0.0.1'" in every error line)
_PASSWORD_PIECES = ("S3c", "ret", "Pw99")


@pytest.mark.parametrize("dsn", ["postgresql://u:S3c@ret:Pw99@127.0.0.1/db", "postgresql://u:S3c@retPw99@127.0.0.1:5432/db",
                                 "postgresql://u:S3c/retPw99@127.0.0.1/db", "postgres://u:S3c#retPw99@127.0.0.1/db"])
def test_a_postgres_dsn_whose_password_is_not_percent_encoded_is_a_settings_error_that_shows_none_of_it(dsn, monkeypatch):
    from helicone_core.settings import describe_settings_error

    monkeypatch.setenv("HELICONE_POSTGRES_DSN", dsn)
    with pytest.raises(ValidationError) as info:
        CommonSettings(_env_file=None)
    message = describe_settings_error(info.value)
    assert message.startswith("HELICONE_POSTGRES_DSN") and "%40" in message, message
    assert not any(piece in message for piece in _PASSWORD_PIECES), message
    assert not any(piece in str(info.value) for piece in _PASSWORD_PIECES)


@pytest.mark.parametrize("dsn", ["postgresql://u:S3c%40ret%3APw99%2F@127.0.0.1:5432/db", "postgresql://127.0.0.1/db",
                                 "postgresql://u:pw@h1:5432,h2:5433/db?sslmode=require", "postgresql://u:pw@[::1]:5432/db",
                                 "postgresql:///db?host=/run/postgresql&user=me@corp", "postgres://u@h"])
def test_a_postgres_dsn_with_its_password_percent_encoded_is_accepted(dsn):
    assert CommonSettings(postgres_dsn=dsn, _env_file=None).postgres_dsn.get_secret_value() == dsn
