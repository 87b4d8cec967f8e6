"""Assemble a sync cycle from configuration: store, sources, destinations, compute hooks.

A face (CLI, scheduler, demo) calls :func:`build_cycle`; this is the only place that knows which
connector class serves which configuration section, so the core stays vendor-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, SecretStr

from ltvsync.config.settings import Settings
from ltvsync.connectors.base import FieldValue, PushItem
from ltvsync.core.pipeline import ComputeHook, Cycle, PushTarget
from ltvsync.core.pull import SourceLike
from ltvsync.core.push import airtable_desired, salesforce_desired
from ltvsync.core.retry import RetryPolicy
from ltvsync.core.store import Store


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the configured store."""
    return Store.open(settings.store.url, batch_size=settings.store.batch_size)


def secret_values(model: BaseModel) -> Iterator[str]:
    """Every secret in the settings, so error messages can be scrubbed of them."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from secret_values(value)


def make_push_item(
    customer_id: int, target: str, values: Mapping[str, FieldValue], previous: Mapping[str, FieldValue] | None
) -> PushItem:
    return PushItem(customer_id, target, dict(values), dict(previous) if previous is not None else None)


def salesforce_client(settings: Settings, retry: RetryPolicy | None = None) -> Any:
    """One Salesforce client for the source and the destination: one login, one API budget view."""
    from ltvsync.connectors.salesforce_client import SalesforceClient

    return SalesforceClient(settings.salesforce, retry=retry)


def build_sources(
    settings: Settings, retry: RetryPolicy | None = None, *, sf_client: Any = None
) -> list[SourceLike]:
    from ltvsync.connectors.mixpanel import MixpanelSource
    from ltvsync.connectors.salesforce import SalesforceSource
    from ltvsync.connectors.zendesk import ZendeskSource

    currencies = frozenset(code.upper() for code in settings.ltv.fx_rates) | {
        settings.ltv.base_currency.upper()
    }
    sources: list[SourceLike] = []
    if settings.salesforce.enabled:
        sources.append(
            SalesforceSource(
                settings.salesforce,
                base_currency=settings.ltv.base_currency,
                known_currencies=currencies,
                retry=retry,
                client=sf_client,
            )
        )
    if settings.mixpanel.enabled:
        sources.append(
            MixpanelSource(
                settings.mixpanel,
                policy=retry,
                currencies=currencies,
                default_currency=settings.ltv.base_currency,
            )
        )
    if settings.zendesk.enabled:
        sources.append(ZendeskSource(settings.zendesk, policy=retry))
    return sources


def build_targets(
    settings: Settings, retry: RetryPolicy | None = None, *, sf_client: Any = None
) -> list[PushTarget]:
    from ltvsync.connectors.airtable import AirtableDestination
    from ltvsync.connectors.salesforce_push import SalesforceDestination

    targets: list[PushTarget] = []
    sf = settings.salesforce
    if sf.enabled and sf.push_enabled:
        dest = SalesforceDestination(sf, retry=retry, client=sf_client)
        fields = dict(sf.push_fields)
        targets.append(
            PushTarget(
                dest,
                lambda conn: salesforce_desired(conn, fields),
                make_push_item,
                edit_policy=sf.edit_policy,
                check=dest.check,
                bulk_threshold=dest.use_bulk,
            )
        )
    at = settings.airtable
    if at.enabled:
        adest = AirtableDestination(at, policy=retry)
        afields = dict(at.fields)
        targets.append(
            PushTarget(adest, lambda conn: airtable_desired(conn, afields), make_push_item, check=adest.check)
        )
    return targets


def compute_hooks() -> list[ComputeHook]:
    """Tag and cohort computations, when their modules are present."""
    hooks: list[ComputeHook] = []
    try:
        from ltvsync.core.tags import tags_hook
    except ImportError:
        pass
    else:
        hooks.append(tags_hook)
    try:
        from ltvsync.core.cohorts import cohorts_hook
    except ImportError:
        pass
    else:
        hooks.append(cohorts_hook)
    return hooks


def build_cycle(
    settings: Settings,
    store: Store | None = None,
    *,
    retry: RetryPolicy | None = None,
    clock: Callable[[], datetime] | None = None,
    with_sources: bool = True,
    with_targets: bool = True,
) -> Cycle:
    """Everything one cycle needs, from configuration."""
    store = store or open_store(settings)
    sf_client = salesforce_client(settings, retry) if settings.salesforce.enabled else None
    extra: dict[str, Any] = {}
    if clock is not None:
        extra["clock"] = clock
    return Cycle(
        settings=settings,
        store=store,
        sources=build_sources(settings, retry, sf_client=sf_client) if with_sources else [],
        targets=build_targets(settings, retry, sf_client=sf_client) if with_targets else [],
        compute_hooks=compute_hooks(),
        secrets=[s for s in secret_values(settings) if s],
        **extra,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
