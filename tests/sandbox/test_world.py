"""The synthetic world: reproducible, statistically faithful to its own ground truth, dirty as configured."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pytest

from ltvsync.sandbox.world import FX_TO_USD, World, WorldParams, generate_world
from ltvsync.sandbox.world_dirt import QUARANTINE_KINDS
from ltvsync.sandbox.world_format import case_safe_suffix, sf_id

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
N = 20_000
WEEK = 7 * 86400.0
SF_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.000\+0000$")
ZD_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(N, seed=7, as_of=AS_OF, dirt_rate=0.03)


@pytest.fixture(scope="module")
def clean() -> World:
    return generate_world(3000, seed=11, as_of=AS_OF, dirt_rate=0.0)


def _within(observed: float, expected: float, se: float, k: float = 4.0) -> None:
    assert abs(observed - expected) <= k * se, f"{observed=} {expected=} {se=}"


def _customer_of_contact(w: World) -> dict[str, int]:
    """Contact id → customer index, resolving duplicate contacts through their normalized email."""
    by_email = {e: i for i, e in enumerate(w.truth.email)}
    out = {cid: i for i, cid in enumerate(w.truth.contact_id)}
    for cid, rec in w.salesforce["Contact"].items():
        if cid not in out:
            out[cid] = by_email[rec["Email"].strip().lower()]
    return out


def _valid_purchase(opp: dict[str, Any]) -> bool:
    """What a loader accepts as a purchase (the quarantine rule tests hold the world to)."""
    amount = opp["Amount"]
    if amount is None or amount < 0 or opp["CurrencyIsoCode"] not in FX_TO_USD:
        return False
    try:
        date.fromisoformat(opp["CloseDate"])
    except ValueError:
        return False
    return True


# -- reproducibility ------------------------------------------------------------------------------
def test_same_seed_gives_identical_world_and_other_seed_differs() -> None:
    a = generate_world(400, seed=3, as_of=AS_OF)
    b = generate_world(400, seed=3, as_of=AS_OF)
    c = generate_world(400, seed=4, as_of=AS_OF)
    for attr in ("salesforce", "mixpanel_events", "mixpanel_profiles", "zendesk_users", "zendesk_tickets"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.truth.dirt == b.truth.dirt
    assert np.array_equal(a.truth.lam, b.truth.lam)
    assert a.mixpanel_events != c.mixpanel_events
    assert a.salesforce["Opportunity"] != c.salesforce["Opportunity"]
    assert not np.array_equal(a.truth.lam, c.truth.lam)


def test_rejects_naive_as_of_and_empty_world() -> None:
    with pytest.raises(ValueError, match="timezone"):
        generate_world(10, as_of=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        generate_world(0, as_of=AS_OF)


# -- formats --------------------------------------------------------------------------------------
def test_salesforce_case_safe_suffix_matches_the_documented_algorithm() -> None:
    # Example id from Salesforce documentation of the 15 → 18 character conversion.
    assert case_safe_suffix("001A0000006Vm9r") == "IAC"
    assert sf_id("003", 1)[:3] == "003" and len(sf_id("003", 1)) == 18


def test_wire_formats_and_timestamps_before_as_of(world: World) -> None:
    as_of = AS_OF.timestamp()
    for obj, prefix in (("Account", "001"), ("Contact", "003"), ("Opportunity", "006")):
        for rid, rec in world.salesforce[obj].items():
            assert rid == rec["Id"] and len(rid) == 18 and rid.startswith(prefix)
            assert rid[15:] == case_safe_suffix(rid[:15])
            assert SF_DATETIME.match(rec["SystemModstamp"]) and SF_DATETIME.match(rec["CreatedDate"])
    stamps = [
        datetime.strptime(r["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.000+0000").replace(tzinfo=UTC)
        for r in world.salesforce["Opportunity"].values()
    ]
    assert max(stamps) < AS_OF
    assert all(ev["properties"]["time"] < as_of for ev in world.mixpanel_events)
    assert all(re.fullmatch(r"[0-9a-f]{32}", ev["properties"]["$insert_id"]) for ev in world.mixpanel_events)
    for t in world.zendesk_tickets.values():
        assert (
            isinstance(t["id"], int)
            and ZD_DATETIME.match(t["created_at"])
            and ZD_DATETIME.match(t["updated_at"])
        )
        updated = datetime.fromisoformat(t["updated_at"].replace("Z", "+00:00"))
        assert t["generated_timestamp"] == int(updated.timestamp()) < as_of
        assert t["updated_at"] >= t["created_at"]
        assert t["requester_id"] in world.zendesk_users
        if t["status"] in ("solved", "closed"):
            assert t["solved_at"] is not None
        else:
            assert t["solved_at"] is None and t["satisfaction_rating"] is None
    assert world.airtable == {"appSandbox0000001": {"Customers": {}}}


# -- BG/NBD and Gamma-Gamma against ground truth ---------------------------------------------------
def test_won_opportunities_per_customer_equal_one_plus_repeat_purchases(world: World) -> None:
    owner = _customer_of_contact(world)
    won = Counter(owner[o["ContactId"]] for o in world.salesforce["Opportunity"].values() if o["IsWon"])
    counts = np.array([won[i] for i in range(N)])
    assert np.array_equal(counts, 1 + world.truth.repeat_purchases)


def test_share_without_repeat_purchase_matches_bgnbd(world: World) -> None:
    t = world.truth
    observed = float(np.mean(t.repeat_purchases == 0))
    # Given lambda the chance of no repeat purchase in (0, T] is exp(-lambda T) (dropout needs a purchase).
    per_customer = np.exp(-t.lam * t.T)
    se = math.sqrt(float(np.sum(per_customer * (1 - per_customer)))) / N
    _within(observed, float(per_customer.mean()), se)
    # Integrating lambda out: P(X(T) = 0) = (alpha / (alpha + T))^r for the drawn population parameters.
    prm = t.params
    population = float(np.mean((prm.alpha / (prm.alpha + t.T)) ** prm.r))
    _within(observed, population, math.sqrt(population * (1 - population) / N))


def test_mean_repeat_purchases_match_an_independent_simulation(world: World) -> None:
    t = world.truth
    rng = np.random.default_rng(123)
    sims = []
    for _ in range(5):
        k = rng.geometric(t.p_drop)
        sims.append(np.minimum(rng.poisson(t.lam * t.T), k))
    expected = float(np.mean(sims))
    se = float(np.std(t.repeat_purchases)) / math.sqrt(N) * math.sqrt(1 + 1 / 5)
    _within(float(t.repeat_purchases.mean()), expected, se)


def test_dead_customers_die_right_after_their_last_purchase(world: World) -> None:
    t = world.truth
    owner = _customer_of_contact(world)
    last_close: dict[int, str] = {}
    dirty: set[int] = set()
    for o in world.salesforce["Opportunity"].values():
        if not o["IsWon"]:
            continue
        i = owner[o["ContactId"]]
        if not _valid_purchase(o):
            dirty.add(i)
            continue
        last_close[i] = max(last_close.get(i, ""), o["CloseDate"])
    assert np.all(t.death[t.alive] > AS_OF.timestamp()) and np.all(t.death[~t.alive] <= AS_OF.timestamp())
    dead = [int(j) for j in np.flatnonzero(~t.alive) if int(j) not in dirty]
    assert 0.05 < len(dead) / N < 0.6
    for d in dead:
        # BG/NBD: dropout happens right after a repeat purchase, so the death day is the last order day.
        assert t.repeat_purchases[d] > 0
        assert last_close[d] == datetime.fromtimestamp(t.death[d], UTC).date().isoformat()


def test_mean_spend_matches_gamma_gamma(world: World) -> None:
    prm = world.truth.params
    first = world.truth.first_amount_usd
    _within(float(first.mean()), prm.mean_spend, float(first.std()) / math.sqrt(N))
    # The same holds on the wire: clean won opportunities converted back to dollars.
    amounts = [
        o["Amount"] * FX_TO_USD[o["CurrencyIsoCode"]]
        for o in world.salesforce["Opportunity"].values()
        if o["IsWon"] and _valid_purchase(o)
    ]
    _within(float(np.mean(amounts)), prm.mean_spend, float(np.std(amounts)) / math.sqrt(len(amounts)) * 3)


# -- behaviour ------------------------------------------------------------------------------------
def _logins_by_customer(w: World) -> dict[int, list[int]]:
    """Login times per customer index, each event once (duplicate-event dirt repeats an insert id)."""
    index = {did: i for i, did in enumerate(w.truth.distinct_id) if did is not None}
    out: dict[int, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for ev in w.mixpanel_events:
        props = ev["properties"]
        if ev["event"] == "Login" and props["distinct_id"] in index and props["$insert_id"] not in seen:
            seen.add(props["$insert_id"])
            out[index[props["distinct_id"]]].append(props["time"])
    return out


def _recent_start(w: World) -> float:
    return AS_OF.timestamp() - w.truth.params.recent_weeks * WEEK


def _fade_counts(
    w: World, logins: dict[int, list[int]], dying: np.ndarray, early_weeks: float
) -> tuple[int, int]:
    """Logins of ``dying`` customers in the last two weeks before death, and in the two weeks
    ``early_weeks`` before death (before the linear fade has taken much)."""
    late = early = 0
    for i in np.flatnonzero(dying):
        d = w.truth.death[i]
        times = logins.get(int(i), [])
        late += sum(1 for x in times if d - 2 * WEEK <= x < d)
        early += sum(1 for x in times if d - early_weeks * WEEK <= x < d - (early_weeks - 2) * WEEK)
    return late, early


def test_no_activity_before_signup_or_after_death(world: World) -> None:
    t = world.truth
    logins = _logins_by_customer(world)
    assert len(logins) > 0.5 * N
    for i, times in logins.items():
        assert max(times) < t.death[i], "a customer logged in after dying"
        assert min(times) >= int(t.signup[i]), "a customer logged in before signing up"


def test_historical_logins_fade_before_death(world: World) -> None:
    t = world.truth
    # Deaths before the recent window: only the sparse historical process is involved.
    dying = ~t.alive & (t.death - t.signup > 12 * WEEK) & (t.death < _recent_start(world))
    late, early = _fade_counts(world, _logins_by_customer(world), dying, early_weeks=12)
    assert early > 50
    # Linear fade over 6 weeks: the last two weeks keep ~1/6 of the rate, ten weeks out keeps all of it.
    assert late < 0.4 * early


def test_recent_logins_fade_before_a_death_inside_the_window(world: World) -> None:
    t = world.truth
    # Deaths at least six weeks into the recent window, so both counting windows lie inside it.
    dying = ~t.alive & (t.death >= _recent_start(world) + 6 * WEEK) & (t.signup < _recent_start(world))
    late, early = _fade_counts(world, _logins_by_customer(world), dying, early_weeks=6)
    assert early > 100
    # Fade kept: (1 - t/6) averages 5/6 from six to four weeks out and 1/6 over the last two weeks.
    assert late < 0.4 * early


def _expected_engaged_share(prm: WorldParams, rng: np.random.Generator, draws: int = 400_000) -> float:
    """P(>= 4 logins in 30 days) for a customer alive throughout, by independent simulation of the
    two login processes (historical rate Gamma(2, login_rate/2), recent rate Gamma(shape, mean/shape))."""
    shape = prm.recent_login_shape
    rate = rng.gamma(2.0, prm.login_rate / 2.0, draws) + rng.gamma(
        shape, prm.recent_login_rate / shape, draws
    )
    return float(np.mean(rng.poisson(rate * 30 / 7) >= 4))


def test_customers_alive_through_the_last_30_days_log_in_habitually(world: World) -> None:
    t = world.truth
    now = AS_OF.timestamp()
    logins = _logins_by_customer(world)
    in_mp = np.array([d is not None for d in t.distinct_id])
    # Alive with no fade (death six or more weeks after as_of), signed up before the 30 days.
    steady = in_mp & (t.death >= now + t.params.fade_weeks * WEEK) & (t.signup <= now - 30 * 86400)
    recent = np.array([sum(1 for x in logins.get(i, []) if x >= now - 30 * 86400) for i in range(N)])
    share = float(np.mean(recent[steady] >= 4))
    expected = _expected_engaged_share(t.params, np.random.default_rng(5))
    _within(share, expected, math.sqrt(expected * (1 - expected) / int(steady.sum())))
    assert share > 0.3  # the "engaged" tag (>= 4 logins in 30 days) finds a good share of live users
    dead = ~t.alive & (t.death < now - 30 * 86400)
    assert not recent[dead].any()


def test_recent_login_rate_drives_recent_logins() -> None:
    now = AS_OF.timestamp()
    quiet = generate_world(2000, seed=2, as_of=AS_OF, params=WorldParams(recent_login_rate=0.0))
    busy = generate_world(2000, seed=2, as_of=AS_OF)
    counts = []
    for w in (quiet, busy):
        logins = _logins_by_customer(w)
        counts.append(sum(1 for times in logins.values() for x in times if x >= now - 30 * 86400))
    # Without the recent process only the sparse historical one remains (~0.08 per week).
    assert counts[1] > 10 * counts[0]


def test_coverage_across_systems(world: World) -> None:
    t = world.truth
    not_in_mp = sum(1 for d in t.distinct_id if d is None) / N
    _within(not_in_mp, 1 - t.params.mixpanel_share, math.sqrt(0.09 / N))
    no_ticket = float(np.mean(t.zendesk_user_id < 0))
    _within(no_ticket, 1 - t.params.ticket_share, math.sqrt(0.24 / N))
    prospects = [p for p in world.mixpanel_profiles if not p["$properties"]["customer"]]
    assert len(prospects) == round(t.params.prospect_share * N)


def test_referrals_name_a_customer_who_signs_up_after_the_referral(world: World) -> None:
    by_email = {e: i for i, e in enumerate(world.truth.email)}
    referrals = [ev for ev in world.mixpanel_events if ev["event"] == "Referral"]
    assert len(referrals) > 0.5 * world.truth.params.referral_share * N
    for ev in referrals:
        referred = by_email[ev["properties"]["referred_email"]]
        assert ev["properties"]["time"] <= world.truth.signup[referred]


def test_churned_customers_rate_support_worse(world: World) -> None:
    by_user = {int(u): i for i, u in enumerate(world.truth.zendesk_user_id) if u >= 0}
    scores: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    for ticket in world.zendesk_tickets.values():
        rating = ticket["satisfaction_rating"]
        if rating and rating["score"] in ("good", "bad"):
            scores[bool(world.truth.alive[by_user[ticket["requester_id"]]])][rating["score"]] += 1
    bad_share = {k: v["bad"] / (v["good"] + v["bad"]) for k, v in scores.items()}
    assert bad_share[False] > bad_share[True] + 0.2


# -- dirt -----------------------------------------------------------------------------------------
def test_quarantine_set_is_exactly_the_listed_purchase_dirt(world: World) -> None:
    invalid = {
        o["Id"] for o in world.salesforce["Opportunity"].values() if o["IsWon"] and not _valid_purchase(o)
    }
    assert invalid == world.truth.dirt_ids("salesforce", "Opportunity", QUARANTINE_KINDS)
    won = sum(1 for o in world.salesforce["Opportunity"].values() if o["IsWon"])
    _within(len(invalid) / won, 0.03, math.sqrt(0.03 * 0.97 / won))


def test_duplicate_events_and_duplicate_contacts_are_listed(world: World) -> None:
    counts = Counter(ev["properties"]["$insert_id"] for ev in world.mixpanel_events)
    repeated = {iid for iid, c in counts.items() if c > 1}
    assert repeated == world.truth.dirt_ids("mixpanel", "event", {"duplicate_event"})
    emails: dict[str, list[str]] = defaultdict(list)
    for cid, rec in world.salesforce["Contact"].items():
        if rec["Email"]:
            emails[rec["Email"].strip().lower()].append(cid)
    shared = {cid for ids in emails.values() if len(ids) > 1 for cid in ids}
    dups = world.truth.dirt_ids("salesforce", "Contact", {"duplicate_contact"})
    assert dups and dups <= shared and len(shared) == 2 * len(dups)


def test_email_dirt_normalizes_back_and_missing_emails_are_listed(world: World) -> None:
    truth_emails = set(world.truth.email)
    messy = world.truth.dirt_ids("salesforce", "Contact", {"email_case_space"})
    missing = {cid for cid, rec in world.salesforce["Contact"].items() if rec["Email"] is None}
    assert missing == world.truth.dirt_ids("salesforce", "Contact", {"missing_email"})
    for cid in messy:
        raw = world.salesforce["Contact"][cid]["Email"]
        assert raw != raw.strip().lower() and raw.strip().lower() in truth_emails
    zd_missing = {
        str(u["id"]) for u in world.zendesk_users.values() if u["role"] == "end-user" and not u["email"]
    }
    assert zd_missing == world.truth.dirt_ids("zendesk", "user", {"missing_email"})


def test_dirt_rate_zero_means_a_clean_world(clean: World) -> None:
    assert clean.truth.dirt == []
    assert all(_valid_purchase(o) for o in clean.salesforce["Opportunity"].values())
    ids = [ev["properties"]["$insert_id"] for ev in clean.mixpanel_events]
    assert len(ids) == len(set(ids))


def test_params_drive_the_world() -> None:
    base = generate_world(3000, seed=1, as_of=AS_OF)
    frequent = generate_world(3000, seed=1, as_of=AS_OF, params=WorldParams(r=1.0, alpha=2.0))
    loyal = generate_world(3000, seed=1, as_of=AS_OF, params=WorldParams(a=0.2, b=20.0))
    assert frequent.truth.repeat_purchases.mean() > 2 * base.truth.repeat_purchases.mean()
    assert loyal.truth.alive.mean() > base.truth.alive.mean() + 0.1
