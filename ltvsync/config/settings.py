"""Typed settings models, one per section of ``ltvsync.toml``.

Secrets are ``SecretStr``; every section may be overridden from the environment with
``LTVSYNC_<SECTION>__<KEY>`` (e.g. ``LTVSYNC_SALESFORCE__SESSION_ID``).  Loading, error
reporting and the annotated example live in ``ltvsync.config.loader``; ``masked_dump`` here is
the one way to show a ``Settings`` with its secrets hidden.

These models are plain pydantic models, not ``BaseSettings``: ``Settings()`` gives the defaults
and never reads the environment, so only the loader (and the CLI) look at ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from datetime import date
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

# What a set secret looks like in any output; unset secrets show as null.
SECRET_MASK = "********"
ENV_PREFIX = "LTVSYNC_"
ENV_NESTED_DELIMITER = "__"
# Plain-string settings whose value is itself a credential (a Slack/Teams webhook URL is one).
SENSITIVE_STRING_KEYS = frozenset({"alert_webhook"})
# The password in ``scheme://user:password@host`` (a Postgres store URL, a proxy URL).
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)([^@/\s]+)(@)")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def env_var_name(*key: str) -> str:
    """The variable overriding a key: ``("mixpanel", "api_secret")`` → ``LTVSYNC_MIXPANEL__API_SECRET``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in key)


def mask_text(text: str) -> str:
    """``text`` with any URL password replaced by ``SECRET_MASK``."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + SECRET_MASK + m.group(3), text)


def is_secret_annotation(annotation: object) -> bool:
    """True for ``SecretStr`` and ``SecretStr | None``."""
    return annotation is SecretStr or SecretStr in get_args(annotation)


class Section(BaseModel):
    """Base of every section: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # SecretStr already hides itself; also hide credentials inside plain strings (a store URL
        # with a password, a webhook URL) so printing or logging a Settings never leaks them.
        for name, value in super().__repr_args__():
            if isinstance(value, str):
                value = SECRET_MASK if (name in SENSITIVE_STRING_KEYS and value) else mask_text(value)
            yield name, value

    @field_validator("*", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # The annotated example leaves secrets as "" and an exported-but-empty environment
        # variable is common; both mean "not set", so the credential checks see None.
        if value == "" and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and is_secret_annotation(field.annotation):
                return None
        return value


class StoreSettings(Section):
    url: str = "sqlite:///ltvsync.db"
    # Rows per INSERT ... ON CONFLICT statement.
    batch_size: int = Field(default=5000, ge=1)


class SalesforceSettings(Section):
    enabled: bool = False
    instance_url: str = ""
    session_id: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    consumer_key: str | None = None
    consumer_secret: SecretStr | None = None
    domain: str = "login"
    api_version: str = "59.0"
    # Path of a CA bundle to trust (the sandbox's throwaway CA); empty means the system store.
    ca_bundle: str | None = None
    contact_object: str = "Contact"
    opportunity_object: str = "Opportunity"
    contact_filter: str = ""
    opportunity_filter: str = "IsWon = true"
    currency_field: str | None = None
    bulk_backfill_threshold: int = 50_000
    # Share of the daily API budget left for pushing; pulling stops before eating into it.
    push_budget_reserve: float = Field(default=0.2, ge=0.0, le=1.0)
    push_enabled: bool = True
    push_object: str = "Contact"
    push_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "ltv": "LTV__c",
            "ltv_predicted": "LTV_Predicted__c",
            "p_alive": "P_Alive__c",
            "tags": "LTV_Tags__c",
            "updated": "LTV_Updated__c",
        }
    )
    bulk_push_threshold: int = 2000
    edit_policy: Literal["overwrite", "skip", "flag"] = "skip"
    write_nulls: bool = False


class MixpanelSettings(Section):
    enabled: bool = False
    api_secret: SecretStr | None = None
    project_id: str | None = None
    residency: Literal["us", "eu", "in"] = "us"
    # Override hosts (the sandbox); empty means the residency's official hosts.
    export_url: str | None = None
    api_url: str | None = None
    lag_days: int = Field(default=3, ge=0)
    start_date: str = "2024-01-01"
    events: dict[str, str] = Field(
        default_factory=lambda: {
            "Purchase": "purchase",
            "Login": "login",
            "Page View": "page_view",
            "Email Open": "email_open",
            "Referral": "referral",
            "Sign Up": "signup",
            "Onboarding Completed": "onboarding_completed",
        }
    )
    amount_property: str = "amount"
    currency_property: str = "currency"

    @field_validator("start_date", mode="before")
    @classmethod
    def _toml_date_is_fine(cls, value: Any) -> Any:
        # `start_date = 2024-01-01` unquoted is a TOML local date; accept it as the string it means.
        return value.isoformat() if isinstance(value, date) else value


class ZendeskSettings(Section):
    enabled: bool = False
    subdomain: str = ""
    base_url: str | None = None
    email: str | None = None
    api_token: SecretStr | None = None
    oauth_token: SecretStr | None = None
    start_time: int = 0
    per_page: int = Field(default=1000, ge=1, le=1000)


class AirtableSettings(Section):
    enabled: bool = False
    api_key: SecretStr | None = None
    base_id: str = ""
    table: str = "Customers"
    endpoint_url: str | None = None
    key_field: str = "Email"
    fields: dict[str, str] = Field(
        default_factory=lambda: {
            "email": "Email",
            "name": "Name",
            "ltv": "LTV",
            "ltv_predicted": "LTV Predicted",
            "p_alive": "P(alive)",
            "tags": "Tags",
            "orders": "Orders",
        }
    )
    requests_per_second: float = Field(default=4.8, gt=0, le=5)


class PriorSettings(Section):
    """Benchmark priors used while a customer's history is thin (credibility weighting)."""

    aov: float = Field(default=50.0, gt=0)
    purchases_per_year: float = Field(default=2.0, gt=0)
    lifespan_years: float = Field(default=3.0, gt=0)
    # Observations worth as much as the prior (k in (n*observed + k*prior)/(n + k)).
    weight: float = Field(default=3.0, ge=0)


class LtvSettings(Section):
    base_currency: str = "USD"
    fx_rates: dict[str, float] = Field(default_factory=lambda: {"USD": 1.0, "EUR": 1.08, "GBP": 1.27})
    customer_definition: Literal["purchaser", "trial_user", "subscriber", "engaged_user"] = "purchaser"
    engaged_event_kind: str = "login"
    start_event: Literal["signup", "onboarding_completed", "first_purchase"] = "first_purchase"
    gross_margin: float | None = Field(default=None, gt=0, le=1)
    priors: PriorSettings = Field(default_factory=PriorSettings)
    model: Literal["auto", "simple", "probabilistic"] = "auto"
    horizon_months: int = Field(default=12, ge=1)
    annual_discount_rate: float = Field(default=0.10, ge=0)
    min_customers_for_model: int = Field(default=200, ge=3)
    min_repeat_buyers_for_model: int = Field(default=50, ge=2)
    time_unit: Literal["day", "week"] = "week"


class TagCondition(Section):
    metric: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: float | None = None
    percentile: float | None = None
    window_days: int | None = None


class TagRule(Section):
    name: str
    description: str = ""
    all: list[TagCondition | TagRule] = Field(default_factory=list)
    any: list[TagCondition | TagRule] = Field(default_factory=list)


class TagSettings(Section):
    use_defaults: bool = True
    one_time_buyer_after_days: int = 60
    churned_after_days: int = 180
    rules: list[TagRule] = Field(default_factory=list)


class ScheduleSettings(Section):
    enabled: bool = True
    interval_minutes: int = Field(default=60, ge=1)
    cron: str | None = None
    full_refresh_cron: str = "0 3 * * 1"
    misfire_grace_seconds: int = 300

    @field_validator("cron", "full_refresh_cron")
    @classmethod
    def _valid_crontab(cls, value: str | None) -> str | None:
        # Parsed with the scheduler's own parser (crontab weekday numbering, Sunday = 0 or 7) so
        # a bad expression fails at start-up, not when the daemon builds its triggers.  Imported
        # lazily: the scheduler imports these models.
        if value:
            from ltvsync.scheduler import crontab_trigger

            try:
                crontab_trigger(value)
            except ValueError as exc:
                raise ValueError(f"a crontab expression 'min hour day month weekday' ({exc})") from None
        return value


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: SecretStr | None = None
    log_format: Literal["plain", "json"] = "plain"
    alert_webhook: str | None = None
    alert_rejections_threshold: int = 100
    alert_lag_minutes: int = 180


class Settings(Section):
    store: StoreSettings = Field(default_factory=StoreSettings)
    salesforce: SalesforceSettings = Field(default_factory=SalesforceSettings)
    mixpanel: MixpanelSettings = Field(default_factory=MixpanelSettings)
    zendesk: ZendeskSettings = Field(default_factory=ZendeskSettings)
    airtable: AirtableSettings = Field(default_factory=AirtableSettings)
    ltv: LtvSettings = Field(default_factory=LtvSettings)
    tags: TagSettings = Field(default_factory=TagSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)


def masked_dump(settings: BaseModel) -> dict[str, Any]:
    """``settings`` as plain JSON-able data with every set secret replaced by ``SECRET_MASK``."""
    return {name: _masked(getattr(settings, name)) for name in type(settings).model_fields}


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, SecretStr):
        return SECRET_MASK if value.get_secret_value() else None
    if isinstance(value, BaseModel):
        return {name: _masked(getattr(value, name), name) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _masked(item) for k, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    if isinstance(value, str):
        return SECRET_MASK if (key in SENSITIVE_STRING_KEYS and value) else mask_text(value)
    return value


def is_loopback(host: str) -> bool:
    """True when binding ``host`` exposes the server to this machine only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def missing_requirements(settings: Settings) -> list[str]:
    """What an enabled section still lacks, each naming the key and the variable that supplies it.

    Kept out of the model validators so that ``Settings.model_validate`` stays usable for partial
    configurations (tests, the sandbox); the loader calls it before anything starts.
    """
    return [
        *_salesforce_missing(settings.salesforce),
        *_mixpanel_missing(settings.mixpanel),
        *_zendesk_missing(settings.zendesk),
        *_airtable_missing(settings.airtable),
        *_server_missing(settings.server),
    ]


def _needs(section: str, key: str, why: str) -> str:
    return f"{section}.{key} is required {why}; set it in the file or via {env_var_name(section, key)}"


def _salesforce_missing(sf: SalesforceSettings) -> list[str]:
    if not sf.enabled:
        return []
    why = "when salesforce.enabled = true"
    problems: list[str] = []
    if sf.session_id is not None:
        if not sf.instance_url:
            problems.append(_needs("salesforce", "instance_url", "with salesforce.session_id"))
    elif sf.username is not None:
        if sf.password is None:
            problems.append(_needs("salesforce", "password", "with salesforce.username"))
        if (sf.consumer_key is None) != (sf.consumer_secret is None):
            lacking = "consumer_secret" if sf.consumer_secret is None else "consumer_key"
            problems.append(_needs("salesforce", lacking, "for the OAuth username-password flow"))
    elif sf.consumer_key is not None or sf.consumer_secret is not None:
        if sf.consumer_secret is None:
            problems.append(_needs("salesforce", "consumer_secret", "with salesforce.consumer_key"))
        if sf.consumer_key is None:
            problems.append(_needs("salesforce", "consumer_key", "with salesforce.consumer_secret"))
        if sf.domain in ("login", "test"):
            # The client-credentials flow only works against a My Domain host.
            problems.append(
                "salesforce.domain must be your My Domain (e.g. 'acme.my'), not "
                f"'{sf.domain}', for the client-credentials flow; set it in the file or via "
                f"{env_var_name('salesforce', 'domain')}"
            )
    else:
        problems.append(
            f"salesforce has no credentials {why}: set salesforce.session_id "
            f"({env_var_name('salesforce', 'session_id')}) with salesforce.instance_url, or "
            f"salesforce.username + salesforce.password ({env_var_name('salesforce', 'password')}) "
            f"[+ security_token ({env_var_name('salesforce', 'security_token')})], or "
            f"salesforce.consumer_key + salesforce.consumer_secret "
            f"({env_var_name('salesforce', 'consumer_secret')})"
        )
    return problems


def _mixpanel_missing(mp: MixpanelSettings) -> list[str]:
    if mp.enabled and mp.api_secret is None:
        return [_needs("mixpanel", "api_secret", "when mixpanel.enabled = true")]
    return []


def _zendesk_missing(zd: ZendeskSettings) -> list[str]:
    if not zd.enabled:
        return []
    problems: list[str] = []
    if not zd.subdomain and not zd.base_url:
        problems.append(
            "zendesk.subdomain (or zendesk.base_url) is required when zendesk.enabled = true; "
            f"set it in the file or via {env_var_name('zendesk', 'subdomain')}"
        )
    if zd.oauth_token is None:
        if zd.email is not None and zd.api_token is None:
            problems.append(_needs("zendesk", "api_token", "with zendesk.email"))
        elif zd.email is None and zd.api_token is not None:
            problems.append(_needs("zendesk", "email", "with zendesk.api_token"))
        elif zd.email is None:
            problems.append(
                "zendesk has no credentials when zendesk.enabled = true: set zendesk.email + "
                f"zendesk.api_token ({env_var_name('zendesk', 'email')}, "
                f"{env_var_name('zendesk', 'api_token')}) or zendesk.oauth_token "
                f"({env_var_name('zendesk', 'oauth_token')})"
            )
    return problems


def _airtable_missing(at: AirtableSettings) -> list[str]:
    if not at.enabled:
        return []
    why = "when airtable.enabled = true"
    problems: list[str] = []
    if at.api_key is None:
        problems.append(_needs("airtable", "api_key", why))
    for key in ("base_id", "table", "key_field"):
        if not getattr(at, key):
            problems.append(_needs("airtable", key, why))
    return problems


def _server_missing(server: ServerSettings) -> list[str]:
    if server.token is None and not is_loopback(server.host):
        why = f"when server.host ({server.host!r}) is not a loopback address"
        return [_needs("server", "token", why)]
    return []
