"""A synthetic customer world with known ground truth, rendered in each vendor's wire format.

Purchases follow BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): a
transaction rate lambda ~ Gamma(r, alpha) per week, and after each repeat purchase the customer drops
out with probability p ~ Beta(a, b).  Spend per transaction follows Gamma-Gamma (Fader & Hardie 2013):
nu ~ Gamma(q, gamma), z ~ Gamma(p, nu), so E[z] = p*gamma/(q-1).  Behaviour follows state: alive
customers log in, view pages and open e-mails (Poisson processes); a dying customer's activity fades
over the weeks before the death time.  History is sparse (a login every few months), but in the last
``recent_weeks`` before ``as_of`` customers log in habitually (about weekly, some far more, some less),
as users of a live product do, so recent-activity tags such as ``engaged`` have something to find.
Everything is drawn with numpy in bulk, so 100,000 customers take seconds.

Wire formats follow /work/shared/docs/API-REFERENCE.md: Salesforce records (§1, 18-character ids,
``YYYY-MM-DDTHH:MM:SS.000+0000``), Mixpanel export/engage JSON (§2.3, §2.4), Zendesk ticket/user JSON
(§4.2).  Records are rendered by :mod:`world_salesforce` and :mod:`world_activity`; dirt (bad records a
loader must clean or quarantine) is added by :mod:`world_dirt` and listed in ``truth.dirt``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ltvsync.sandbox import world_activity
from ltvsync.sandbox.world_dirt import Dirt, apply_dirt
from ltvsync.sandbox.world_format import iso_seconds
from ltvsync.sandbox.world_salesforce import CURRENCIES, FX_TO_USD, draw_names, salesforce_objects

WEEK = 7 * 86400.0
AIRTABLE_BASE = "appSandbox0000001"


@dataclass(frozen=True)
class WorldParams:
    """Population parameters; the BG/NBD defaults are close to the CDNOW fit (rates per week)."""

    r: float = 0.25
    alpha: float = 4.0
    a: float = 0.8
    b: float = 2.5
    # Gamma-Gamma: mean spend p*gamma/(q-1) = 50 dollars.
    p: float = 6.0
    q: float = 4.0
    gamma: float = 25.0
    signup_window_days: int = 730
    purchase_at_signup_share: float = 0.85  # the rest buy a few days after signing up
    mixpanel_share: float = 0.9
    ticket_share: float = 0.4
    prospect_share: float = 0.1  # Mixpanel-only sign-ups who never bought
    referral_share: float = 0.05  # customers who arrived through a referral
    onboarding_share: float = 0.7
    login_rate: float = 0.08  # mean logins per week while active, over the whole history
    # Habitual logins in the last weeks before as_of only: a full history at this rate would be tens of
    # millions of events at 100k customers; a recent window costs about mixpanel_share x alive share x
    # recent_weeks x recent_login_rate events per customer (~8 at the defaults).  The window spans more
    # than the two 30-day windows the at-risk login trend compares, so the step up at its start is not
    # read as a rising trend.
    recent_weeks: float = 9.0
    recent_login_rate: float = 1.25  # mean logins per week in that window while active
    # Gamma shape of the per-customer recent rate: 1 (exponential) gives many light users and a tail of
    # power users logging in several times a week.
    recent_login_shape: float = 1.0
    page_view_rate: float = 0.04
    email_open_rate: float = 0.03
    fade_weeks: float = 6.0  # activity fades linearly over this many weeks before death
    lost_opportunity_share: float = 0.1  # non-won opportunities per won one
    currency_shares: tuple[float, float, float] = (0.8, 0.12, 0.08)

    @property
    def mean_spend(self) -> float:
        return self.p * self.gamma / (self.q - 1)


@dataclass
class GroundTruth:
    """What a perfect loader and model would recover; arrays are indexed by customer number."""

    params: WorldParams
    email: list[str]  # clean (normalized) email per customer
    contact_id: list[str]
    distinct_id: list[str | None]  # None: not in Mixpanel
    zendesk_user_id: np.ndarray  # int64, -1: never filed a ticket
    signup: np.ndarray  # epoch seconds
    first_purchase: np.ndarray  # epoch seconds
    T: np.ndarray  # weeks from first purchase to as_of
    lam: np.ndarray  # purchases per week
    p_drop: np.ndarray
    nu: np.ndarray
    mean_spend: np.ndarray  # E[z | nu] = p/nu, dollars
    repeat_purchases: np.ndarray  # x: repeat purchases in (first purchase, as_of]
    alive: np.ndarray  # bool, alive at as_of
    death: np.ndarray  # epoch seconds (> as_of for customers still alive)
    first_amount_usd: np.ndarray
    prospect_emails: list[str] = field(default_factory=list)
    dirt: list[Dirt] = field(default_factory=list)

    def dirt_ids(self, system: str, obj: str, kinds: frozenset[str] | set[str] | None = None) -> set[str]:
        """Ids of dirty records of one object, optionally restricted to some kinds."""
        return {
            d.id
            for d in self.dirt
            if d.system == system and d.object == obj and (not kinds or d.kind in kinds)
        }


@dataclass
class World:
    seed: int
    as_of: datetime
    salesforce: dict[str, dict[str, dict[str, Any]]]
    mixpanel_events: list[dict[str, Any]]
    mixpanel_profiles: list[dict[str, Any]]
    zendesk_users: dict[int, dict[str, Any]]
    zendesk_tickets: dict[int, dict[str, Any]]
    airtable: dict[str, dict[str, dict[str, dict[str, Any]]]]
    truth: GroundTruth


def default_as_of() -> datetime:
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def generate_world(
    n_customers: int = 2000,
    seed: int = 0,
    as_of: datetime | None = None,
    dirt_rate: float = 0.03,
    params: WorldParams | None = None,
) -> World:
    """Draw a world; identical for identical (n_customers, seed, as_of, dirt_rate, params)."""
    # Hundreds of thousands of acyclic dicts are built here; cyclic-GC passes over them are pure
    # overhead (~10-15% of generation time), so collection is paused and restored afterwards.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(n_customers, seed, as_of, dirt_rate, params)
    finally:
        if was_enabled:
            gc.enable()


def _generate(
    n_customers: int, seed: int, as_of: datetime | None, dirt_rate: float, params: WorldParams | None
) -> World:
    if n_customers < 1:
        raise ValueError("n_customers must be at least 1")
    as_of = as_of or default_as_of()
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    prm = params or WorldParams()
    rng = np.random.default_rng([seed, int(as_of.timestamp())])
    now = as_of.timestamp()
    n = n_customers

    signup = now - rng.uniform(86400.0, prm.signup_window_days * 86400.0, n)
    delay = np.where(rng.random(n) < prm.purchase_at_signup_share, 0.0, rng.exponential(2 * 86400.0, n))
    first = np.minimum(signup + delay, now - 1.0)
    T = (now - first) / WEEK
    pur = _draw_purchases(rng, prm, first, T)
    names = draw_names(rng, n)

    sf, first_amount = salesforce_objects(rng, prm, n, signup, first, pur, names, now)
    truth = GroundTruth(
        params=prm,
        email=names["email"],
        contact_id=list(sf["Contact"].keys()),
        distinct_id=[None] * n,
        zendesk_user_id=np.full(n, -1, dtype=np.int64),
        signup=signup,
        first_purchase=first,
        T=T,
        lam=pur["lam"],
        p_drop=pur["p"],
        nu=pur["nu"],
        mean_spend=prm.p / pur["nu"],
        repeat_purchases=pur["x"],
        alive=pur["death"] > now,
        death=pur["death"],
        first_amount_usd=first_amount,
    )
    events, profiles = world_activity.mixpanel(rng, prm, truth, names, now)
    users, tickets = world_activity.zendesk(rng, prm, truth, names, now)
    world = World(
        seed=seed,
        as_of=as_of,
        salesforce=sf,
        mixpanel_events=events,
        mixpanel_profiles=profiles,
        zendesk_users=users,
        zendesk_tickets=tickets,
        airtable={AIRTABLE_BASE: {"Customers": {}}},
        truth=truth,
    )
    truth.dirt = apply_dirt(world, rng, dirt_rate)
    return world


def _draw_purchases(
    rng: np.random.Generator, prm: WorldParams, first: np.ndarray, T: np.ndarray
) -> dict[str, np.ndarray]:
    """BG/NBD repeat purchases in (0, T] weeks after the first purchase, plus the death time.

    Given lambda, the potential purchases in (0, T] are Poisson(lambda*T) with uniform order statistics
    as times; the customer dies right after the K-th repeat purchase, K ~ Geometric(p), so the observed
    ones are the first min(N, K).  If K > N the death lies beyond T: T + Gamma(K - N, 1/lambda).
    """
    n = len(T)
    lam = rng.gamma(prm.r, 1.0 / prm.alpha, n)
    p = rng.beta(prm.a, prm.b, n)
    nu = rng.gamma(prm.q, 1.0 / prm.gamma, n)
    k = rng.geometric(p)
    big_n = rng.poisson(lam * T)
    x = np.minimum(big_n, k)
    owner = np.repeat(np.arange(n), big_n)
    u = rng.random(len(owner)) * T[owner]
    order = np.lexsort((u, owner))
    owner, u = owner[order], u[order]
    starts = np.cumsum(big_n) - big_n
    rank = np.arange(len(owner)) - starts[owner]
    keep = rank < x[owner]
    t_weeks = u[keep]
    buyer = owner[keep]
    dies_inside = k <= big_n
    kth = np.zeros(n)
    last_idx = starts + k - 1
    kth[dies_inside] = u[last_idx[dies_inside]]
    extra = np.maximum(k - big_n, 1)
    beyond = T + rng.gamma(extra, 1.0 / np.maximum(lam, 1e-12))
    death_weeks = np.where(dies_inside, kth, beyond)
    return {
        "lam": lam,
        "p": p,
        "nu": nu,
        "x": x,
        "death": first + death_weeks * WEEK,
        "repeat_owner": buyer,
        "repeat_time": first[buyer] + t_weeks * WEEK,
    }


def as_of_datetime(epoch: float) -> datetime:
    """Epoch seconds → aware UTC datetime (helper for tests reading truth arrays)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(epoch))


__all__ = [
    "AIRTABLE_BASE",
    "CURRENCIES",
    "FX_TO_USD",
    "Dirt",
    "GroundTruth",
    "World",
    "WorldParams",
    "generate_world",
    "iso_seconds",
]
