"""Tests of ``ltvsync.config.loader``: file location, TOML and validation errors, environment
overrides, credential checks for enabled sections, and secret masking."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from ltvsync.config.loader import env_var_name, load, load_settings
from ltvsync.config.settings import SECRET_MASK, Settings, masked_dump
from ltvsync.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "ltvsync" / "config" / "example.toml"


def write(tmp_path: Path, text: str, name: str = "ltvsync.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    return str(info.value)


# --- locating the file -------------------------------------------------------------------------


def test_missing_default_file_means_all_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load(None, {})
    assert loaded.settings == Settings()
    assert loaded.path is None


def test_default_file_in_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[store]\nbatch_size = 7\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, {}).store.batch_size == 7


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.toml")
    assert "nope.toml" in message and "does not exist" in message


def test_ltvsync_config_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = write(tmp_path, "[store]\nbatch_size = 11\n", "other.toml")
    assert load_settings(None, {"LTVSYNC_CONFIG": str(other)}).store.batch_size == 11
    message = error_of(None, {"LTVSYNC_CONFIG": str(tmp_path / "gone.toml")})
    assert "gone.toml" in message


def test_explicit_path_beats_ltvsync_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "[store]\nbatch_size = 3\n", "chosen.toml")
    env = {"LTVSYNC_CONFIG": str(tmp_path / "missing.toml")}
    assert load_settings(chosen, env).store.batch_size == 3


# --- file errors -------------------------------------------------------------------------------


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "x"\nbatch_size = \n')
    message = error_of(path)
    assert str(path) in message
    assert "line 3" in message
    assert re.search(r"column \d+", message)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[store]\nurl = "caf\xe9"\n'.encode("latin-1"))
    assert "UTF-8" in error_of(path)


def test_wrong_type_names_dotted_key_type_and_expectation(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '[store]\nbatch_size = "abc"\n'))
    line = next(line for line in message.splitlines() if "store.batch_size" in line)
    assert "string 'abc'" in line
    assert "integer" in line
    assert "ltvsync.toml" in line


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    text = '[store]\nbatch_size = 0\n[server]\nport = "http"\n[mixpanel]\nresidency = "mars"\n'
    message = error_of(write(tmp_path, text))
    for key in ("store.batch_size", "server.port", "mixpanel.residency"):
        assert key in message
    assert "3 problems" in message


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '[salesforce]\ninstanse_url = "https://x"\n'))
    assert "salesforce.instanse_url" in message
    assert "unknown key" in message
    assert "instance_url" in message.split("salesforce.instanse_url", 1)[1]


def test_unknown_section_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "[hubspot]\nenabled = true\n"))
    assert "hubspot" in message and "unknown key" in message


def test_secret_values_are_never_echoed_in_errors(tmp_path: Path) -> None:
    text = '[mixpanel]\napi_secret = ["hunter2-mp"]\napi_secrt = "hunter2-typo"\n'
    message = error_of(write(tmp_path, text))
    assert "mixpanel.api_secret" in message and "mixpanel.api_secrt" in message
    assert "hunter2" not in message


def test_tag_rule_errors_point_into_the_branch_that_fits(tmp_path: Path) -> None:
    text = """
[[tags.rules]]
name = "vip"
all = [
  { metric = "ltv_simple", op = "=>", value = 3 },
  { name = "inner", any = [{ metric = "orders", op = ">", valu = 1 }] },
]
"""
    message = error_of(write(tmp_path, text))
    assert "tags.rules[0].all[0].op" in message
    assert "tags.rules[0].all[1].any[0].valu" in message
    # The condition was not a nested rule: no complaints about it lacking a rule's "name".
    assert "tags.rules[0].all[0].name" not in message
    assert "2 problems" in message


def test_unquoted_toml_date_is_accepted_for_start_date(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[mixpanel]\nstart_date = 2025-02-03\n"), {})
    assert settings.mixpanel.start_date == "2025-02-03"


def test_bad_crontab_is_rejected_and_crontab_sunday_7_accepted(tmp_path: Path) -> None:
    assert "schedule.cron" in error_of(write(tmp_path, '[schedule]\ncron = "0 3 * * 9"\n'))
    assert load_settings(write(tmp_path, '[schedule]\ncron = "0 3 * * 7"\n'), {}).schedule.cron == "0 3 * * 7"


# --- environment -------------------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "sqlite:///file.db"\nbatch_size = 10\n[ltv.priors]\naov = 20.0\n')
    env = {
        "LTVSYNC_STORE__URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "LTVSYNC_LTV__PRIORS__AOV": "75.5",
        "LTVSYNC_SCHEDULE__ENABLED": "false",
        "LTVSYNC_LTV__FX_RATES": '{"USD": 1.0, "CHF": 1.1}',
        "UNRELATED": "ignored",
    }
    loaded = load(path, env)
    settings = loaded.settings
    assert settings.store.url == env["LTVSYNC_STORE__URL"]
    assert settings.store.batch_size == 10  # untouched keys keep the file's value
    assert settings.ltv.priors.aov == 75.5
    assert settings.ltv.priors.weight == 3.0
    assert settings.schedule.enabled is False
    assert settings.ltv.fx_rates == {"USD": 1.0, "CHF": 1.1}
    assert loaded.source_of(("store", "url")) == "LTVSYNC_STORE__URL"
    assert loaded.source_of(("store", "batch_size")) == "file"
    assert loaded.source_of(("server", "port")) == "default"


def test_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = error_of(None, {"LTVSYNC_STORE__BATCH_SIZE": "lots"})
    assert "store.batch_size" in message and "LTVSYNC_STORE__BATCH_SIZE" in message


def test_misspelt_environment_section_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = error_of(None, {"LTVSYNC_MIXPANL__API_SECRET": "hunter2-env"})
    assert "LTVSYNC_MIXPANL__API_SECRET" in message and "mixpanel" in message
    assert "hunter2" not in message


def test_unknown_environment_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = error_of(None, {"LTVSYNC_STORE__URLL": "sqlite://"})
    assert "store.urll" in message and "LTVSYNC_STORE__URLL" in message


def test_reads_os_environ_when_no_mapping_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTVSYNC_SERVER__PORT", "9999")
    assert load_settings().server.port == 9999


def test_env_var_name_follows_the_nesting_convention() -> None:
    assert env_var_name("mixpanel", "api_secret") == "LTVSYNC_MIXPANEL__API_SECRET"
    assert env_var_name("ltv", "priors", "aov") == "LTVSYNC_LTV__PRIORS__AOV"


# --- credentials and required fields of enabled sections ---------------------------------------


def test_enabled_mixpanel_without_secret_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[mixpanel]\nenabled = true\n")
    assert "LTVSYNC_MIXPANEL__API_SECRET" in error_of(path)
    assert "LTVSYNC_MIXPANEL__API_SECRET" in error_of(path, {"LTVSYNC_MIXPANEL__API_SECRET": ""})
    settings = load_settings(path, {"LTVSYNC_MIXPANEL__API_SECRET": "s3cret"})
    assert settings.mixpanel.api_secret is not None
    assert settings.mixpanel.api_secret.get_secret_value() == "s3cret"


def test_disabled_sections_need_no_credentials(tmp_path: Path) -> None:
    text = "[mixpanel]\nenabled = false\n[zendesk]\nenabled = false\n[airtable]\nenabled = false\n"
    assert load_settings(write(tmp_path, text), {}).mixpanel.api_secret is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('enabled = true\nsession_id = "x"', "LTVSYNC_SALESFORCE__INSTANCE_URL"),
        ('enabled = true\nusername = "u@example.com"', "LTVSYNC_SALESFORCE__PASSWORD"),
        ('enabled = true\nconsumer_key = "k"', "LTVSYNC_SALESFORCE__CONSUMER_SECRET"),
        ('enabled = true\nconsumer_key = "k"\nconsumer_secret = "s"', "LTVSYNC_SALESFORCE__DOMAIN"),
        ("enabled = true", "LTVSYNC_SALESFORCE__SESSION_ID"),
    ],
)
def test_salesforce_credentials(tmp_path: Path, section: str, expected: str) -> None:
    assert expected in error_of(write(tmp_path, f"[salesforce]\n{section}\n"))


@pytest.mark.parametrize(
    "section",
    [
        'enabled = true\nsession_id = "x"\ninstance_url = "https://acme.my.salesforce.com"',
        'enabled = true\nusername = "u@example.com"\npassword = "p"',
        'enabled = true\nconsumer_key = "k"\nconsumer_secret = "s"\ndomain = "acme.my"',
    ],
)
def test_salesforce_complete_credentials_pass(tmp_path: Path, section: str) -> None:
    assert load_settings(write(tmp_path, f"[salesforce]\n{section}\n"), {}).salesforce.enabled


def test_zendesk_needs_a_location_and_credentials(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '[zendesk]\nenabled = true\nemail = "a@b.c"\n'))
    assert "LTVSYNC_ZENDESK__SUBDOMAIN" in message and "LTVSYNC_ZENDESK__API_TOKEN" in message
    ok = '[zendesk]\nenabled = true\nbase_url = "http://127.0.0.1:9"\noauth_token = "t"\n'
    assert load_settings(write(tmp_path, ok), {}).zendesk.enabled


def test_airtable_needs_key_and_base(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "[airtable]\nenabled = true\n"))
    assert "LTVSYNC_AIRTABLE__API_KEY" in message and "airtable.base_id" in message


@pytest.mark.parametrize(
    ("host", "needs_token"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("example.com", True),
    ],
)
def test_server_token_required_off_loopback(tmp_path: Path, host: str, needs_token: bool) -> None:
    path = write(tmp_path, f'[server]\nhost = "{host}"\n')
    if needs_token:
        assert "LTVSYNC_SERVER__TOKEN" in error_of(path)
        assert load_settings(path, {"LTVSYNC_SERVER__TOKEN": "t"}).server.host == host
    else:
        assert load_settings(path, {}).server.host == host


# --- masking -----------------------------------------------------------------------------------


def test_masked_dump_hides_secrets_and_url_passwords() -> None:
    settings = Settings.model_validate(
        {
            "store": {"url": "postgresql+psycopg://app:pg-hunter2@db:5432/ltv"},
            "mixpanel": {"api_secret": "mp-hunter2"},
            "server": {"alert_webhook": "https://hooks.example.com/T0/B0/hook-hunter2"},
        }
    )
    dump = masked_dump(settings)
    assert dump["mixpanel"]["api_secret"] == SECRET_MASK
    assert dump["salesforce"]["session_id"] is None
    assert dump["store"]["url"] == f"postgresql+psycopg://app:{SECRET_MASK}@db:5432/ltv"
    assert dump["server"]["alert_webhook"] == SECRET_MASK
    assert dump["ltv"]["priors"]["aov"] == 50.0
    shown = json.dumps(dump) + repr(settings) + str(settings) + repr(settings.store) + str(settings.server)
    assert "hunter2" not in shown
    # Masking is for display only: the real values are still there for the code that needs them.
    assert settings.store.url.endswith("pg-hunter2@db:5432/ltv")


# --- the annotated example ---------------------------------------------------------------------


def test_example_validates_and_shows_the_true_defaults() -> None:
    assert load_settings(EXAMPLE, {}) == Settings()


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append((prefix.rstrip("."), name))
    return keys


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    # Split into [section] blocks; a key counts as documented when it is set or shown commented out.
    blocks = dict(re.findall(r"^\[([a-z_.]+)\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S))
    for section, key in _keys(Settings):
        if (section, key) == ("tags", "rules"):
            assert "# [[tags.rules]]" in text
            continue
        block = blocks.get(section, "") + blocks.get(f"{section}.{key}", "")
        documented = re.search(rf"^(# )?{key} = ", block, flags=re.M) or f"[{section}.{key}]" in text
        assert documented, f"{section}.{key} is missing from example.toml"


def test_example_secrets_are_empty_and_name_their_variable() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, key in (
        ("salesforce", "session_id"),
        ("mixpanel", "api_secret"),
        ("zendesk", "api_token"),
        ("airtable", "api_key"),
        ("server", "token"),
    ):
        assert env_var_name(section, key) in text
        assert re.search(rf'^{key} = ""$', text, flags=re.M)


def test_commented_tag_rule_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# [[tags.rules]]")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("#"):
            break
        block.append(line[2:])
    settings = load_settings(write(tmp_path, "\n".join(block) + "\n"), {})
    rule = settings.tags.rules[0]
    assert rule.name == "vip" and len(rule.all) == 2 and len(rule.any) == 2


def test_configuration_reference_lists_every_key_and_variable() -> None:
    reference = (EXAMPLE.parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for section, key in _keys(Settings):
        row = re.search(
            rf"^\| `{key}` \| .*`{env_var_name(*section.split('.'), key)}`", reference, flags=re.M
        )
        assert row, f"{section}.{key} is missing from docs/configuration.md"
    rule_example = reference.split("```toml\n", 1)[1].split("```", 1)[0]
    assert Settings.model_validate(tomllib.loads(rule_example)).tags.rules[0].name == "vip"
