"""Typed settings models, one per section of ``ltvsync.toml``.

Secrets are ``SecretStr``; every section may be overridden from the environment with
``LTVSYNC_<SECTION>__<KEY>`` (e.g. ``LTVSYNC_SALESFORCE__SESSION_ID``).  Loading, error
reporting and the annotated example live in ``ltvsync.config.loader``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Section(BaseModel):
    """Base of every section: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


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
