"""Behaviour of the synthetic world outside Salesforce: Mixpanel events/profiles and Zendesk tickets.

Event shapes follow Mixpanel raw export and engage (API-REFERENCE §2.3, §2.4); ticket and user shapes
follow Zendesk incremental exports (§4.2; ``metric_set`` mirrors the Ticket Metrics API fields
``reply_time_in_minutes`` / ``full_resolution_time_in_minutes``).  Activity is a Poisson process per
person between sign-up and death (or ``as_of``), thinned linearly over the last ``fade_weeks`` before
death so churn is visible in behaviour before it shows in purchases.  Logins have a second, denser
process over the last ``recent_weeks`` before ``as_of`` (habitual use of a live product), thinned the
same way, so nobody logs in after death and dying customers' logins fade there too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ltvsync.sandbox.world_format import insert_ids, iso_seconds

if TYPE_CHECKING:
    from ltvsync.sandbox.world import GroundTruth, WorldParams

WEEK = 7 * 86400.0
EVENT_NAMES = ("Sign Up", "Onboarding Completed", "Login", "Page View", "Email Open", "Referral")
SUBJECTS = (
    "Cannot log in",
    "Refund request",
    "Invoice question",
    "Order has not arrived",
    "How do I change my plan?",
    "Charged twice",
    "Feature request",
    "Password reset not working",
)
CHANNELS = ("email", "web", "chat", "api")
PROSPECT_TICKET_SHARE = 0.0  # prospects never reach support in this world
N_AGENTS = 5
AGENT_ID_BASE = 100_000_000
USER_ID_BASE = 360_000_000_000
TICKET_ID_BASE = 1000
SOLVED_TO_CLOSED_DAYS = 4  # Zendesk closes solved tickets automatically after a few days


def _poisson_times(
    rng: np.random.Generator,
    start: np.ndarray,
    end: np.ndarray,
    death: np.ndarray,
    rate: np.ndarray,
    fade: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(person index, epoch time) of a thinned Poisson process per person on [start, end)."""
    span = np.maximum(end - start, 0.0)
    count = rng.poisson(rate * span / WEEK)
    owner = np.repeat(np.arange(len(start)), count)
    t = start[owner] + rng.random(len(owner)) * span[owner]
    keep = rng.random(len(owner)) < np.clip((death[owner] - t) / (fade * WEEK), 0.0, 1.0)
    return owner[keep], t[keep]


def mixpanel(
    rng: np.random.Generator, prm: WorldParams, truth: GroundTruth, names: dict[str, list[str]], now: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events and engage profiles for customers present in Mixpanel plus Mixpanel-only prospects."""
    n = len(truth.email)
    in_mp = np.flatnonzero(rng.random(n) < prm.mixpanel_share)
    n_pro = round(prm.prospect_share * n)
    pro_signup = now - rng.uniform(86400.0, prm.signup_window_days * 86400.0, n_pro)
    pro_end = np.minimum(pro_signup + rng.exponential(3 * WEEK, n_pro), now - 1.0)
    # Person table: customers in Mixpanel first, then prospects.
    signup = np.concatenate([truth.signup[in_mp], pro_signup])
    death = np.concatenate([truth.death[in_mp], pro_end])
    end = np.minimum(death, now - 1.0)
    dids = [f"u_{i:06d}" for i in in_mp] + [f"u_{n + j:06d}" for j in range(n_pro)]
    pro_last = rng.integers(0, len(names["last"]) or 1, n_pro)
    pro_emails = [f"prospect{j}.{names['last'][k % n].lower()}@example.com" for j, k in enumerate(pro_last)]
    emails = [truth.email[i] for i in in_mp] + pro_emails
    full_names = [f"{names['first'][i]} {names['last'][i]}" for i in in_mp] + [""] * n_pro
    for i, did in zip(in_mp, dids[: len(in_mp)], strict=True):
        truth.distinct_id[i] = did
    truth.prospect_emails = pro_emails

    m = len(dids)
    parts_owner = [np.arange(m)]
    parts_time = [signup]
    parts_kind = [np.zeros(m, dtype=np.int64)]
    onboard = np.flatnonzero(rng.random(m) < prm.onboarding_share)
    onboard_t = signup[onboard] + rng.exponential(86400.0, len(onboard))
    ok = onboard_t < end[onboard]
    parts_owner.append(onboard[ok])
    parts_time.append(onboard_t[ok])
    parts_kind.append(np.ones(ok.sum(), dtype=np.int64))
    for kind_no, mean_rate in ((2, prm.login_rate), (3, prm.page_view_rate), (4, prm.email_open_rate)):
        rate = rng.gamma(2.0, mean_rate / 2.0, m)
        owner, t = _poisson_times(rng, signup, end, death, rate, prm.fade_weeks)
        parts_owner.append(owner)
        parts_time.append(t)
        parts_kind.append(np.full(len(owner), kind_no, dtype=np.int64))
    owner, t = _recent_logins(rng, prm, signup, end, death, now)
    parts_owner.append(owner)
    parts_time.append(t)
    parts_kind.append(np.full(len(owner), 2, dtype=np.int64))
    ref_owner, ref_time, ref_target = _referrals(rng, prm, signup[: len(in_mp)])
    parts_owner.append(ref_owner)
    parts_time.append(ref_time)
    parts_kind.append(np.full(len(ref_owner), 5, dtype=np.int64))

    all_owner = np.concatenate(parts_owner)
    when = np.concatenate(parts_time).astype(np.int64)
    kind = np.concatenate(parts_kind)
    target = np.concatenate([np.full(len(all_owner) - len(ref_target), -1), ref_target])
    order = np.lexsort((all_owner, when))
    ids = insert_ids(rng, len(order))
    events: list[dict[str, Any]] = []
    for seq, j in enumerate(order):
        props: dict[str, Any] = {
            "time": int(when[j]),
            "distinct_id": dids[all_owner[j]],
            "$insert_id": ids[seq],
        }
        props["mp_lib"] = "web"
        if target[j] >= 0:
            props["referred_email"] = emails[target[j]]
        events.append({"event": EVENT_NAMES[kind[j]], "properties": props})
    last_seen = np.full(m, -1, dtype=np.int64)
    np.maximum.at(last_seen, all_owner, when)
    created = iso_seconds(signup, zulu=False)
    seen = iso_seconds(last_seen, zulu=False)
    profiles = [
        {
            "$distinct_id": dids[i],
            "$properties": {
                "$email": emails[i],
                "$name": full_names[i] or None,
                "$created": created[i],
                "$last_seen": seen[i],
                "customer": i < len(in_mp),
            },
        }
        for i in range(m)
    ]
    return events, profiles


def _recent_logins(
    rng: np.random.Generator,
    prm: WorldParams,
    signup: np.ndarray,
    end: np.ndarray,
    death: np.ndarray,
    now: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Habitual logins in the last ``recent_weeks`` before ``now``, per-person rate Gamma-distributed."""
    start = np.maximum(signup, now - prm.recent_weeks * WEEK)
    shape = prm.recent_login_shape
    rate = rng.gamma(shape, prm.recent_login_rate / shape, len(signup))
    return _poisson_times(rng, start, end, death, rate, prm.fade_weeks)


def _referrals(
    rng: np.random.Generator, prm: WorldParams, signup: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Referral events: an earlier customer refers a later one shortly before the later one signs up."""
    by_signup = np.argsort(signup, kind="stable")
    rank = np.empty_like(by_signup)
    rank[by_signup] = np.arange(len(signup))
    referred = np.flatnonzero((rng.random(len(signup)) < prm.referral_share) & (rank > 0))
    referrer = by_signup[(rng.random(len(referred)) * rank[referred]).astype(np.int64)]
    lo = np.maximum(signup[referrer], signup[referred] - WEEK)
    when = lo + rng.random(len(referred)) * (signup[referred] - lo)
    return referrer, when, referred


def zendesk(
    rng: np.random.Generator, prm: WorldParams, truth: GroundTruth, names: dict[str, list[str]], now: float
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Zendesk end users (customers who filed tickets), a few agents, and their tickets."""
    n = len(truth.email)
    filer = np.flatnonzero(rng.random(n) < prm.ticket_share)
    count = 1 + rng.poisson(0.6, len(filer))
    owner = np.repeat(filer, count)
    end = np.maximum(np.minimum(truth.death[owner] + 2 * WEEK, now - 3600.0), truth.signup[owner] + 1.0)
    created = truth.signup[owner] + rng.random(len(owner)) * (end - truth.signup[owner])
    order = np.argsort(created, kind="stable")
    owner, created = owner[order], created[order]
    first_ticket = np.full(n, np.inf)
    np.minimum.at(first_ticket, owner, created)
    user_order = filer[np.argsort(first_ticket[filer], kind="stable")]
    for k, i in enumerate(user_order):
        truth.zendesk_user_id[i] = USER_ID_BASE + k
    users: dict[int, dict[str, Any]] = {}
    agent_created = iso_seconds(np.full(N_AGENTS, now - 800 * 86400.0))
    for a in range(N_AGENTS):
        uid = AGENT_ID_BASE + a
        users[uid] = _user(uid, f"Agent {a}", f"agent{a}@support.example.com", "agent", agent_created[a])
    u_created = first_ticket[user_order] - rng.uniform(0, 600.0, len(user_order))
    u_created_s = iso_seconds(u_created)
    for k, i in enumerate(user_order):
        uid = USER_ID_BASE + k
        users[uid] = _user(
            uid, f"{names['first'][i]} {names['last'][i]}", truth.email[i], "end-user", u_created_s[k]
        )
    return users, _tickets(rng, truth, owner, created, now)


def _user(uid: int, name: str, email: str | None, role: str, created: str) -> dict[str, Any]:
    return {
        "id": uid,
        "name": name,
        "email": email,
        "role": role,
        "active": True,
        "organization_id": None,
        "time_zone": "UTC",
        "created_at": created,
        "updated_at": created,
    }


def _tickets(
    rng: np.random.Generator, truth: GroundTruth, owner: np.ndarray, created: np.ndarray, now: float
) -> dict[int, dict[str, Any]]:
    m = len(owner)
    reply_min = np.maximum(1, rng.lognormal(np.log(120.0), 1.0, m)).astype(np.int64)
    solved = created + reply_min * 60.0 + rng.exponential(2 * 86400.0, m)
    is_solved = solved < now - 60.0
    closed = is_solved & (solved < now - SOLVED_TO_CLOSED_DAYS * 86400.0)
    replied = created + reply_min * 60.0
    updated = np.where(is_solved, solved, np.where(replied < now - 60.0, replied, created))
    updated = np.where(closed, np.minimum(solved + SOLVED_TO_CLOSED_DAYS * 86400.0, now - 60.0), updated)
    dead = truth.death[owner] < now
    roll = rng.random(m)
    # Churning customers rate support worse: (null, offered, good, bad) cut points.
    cuts = np.where(dead[:, None], [[0.35, 0.55, 0.7]], [[0.35, 0.6, 0.92]])
    score_idx = (roll[:, None] >= cuts).sum(axis=1)
    open_status = ("new", "open", "pending")
    open_pick = rng.integers(0, 3, m)
    created_s, updated_s, solved_s = iso_seconds(created), iso_seconds(updated), iso_seconds(solved)
    chan = rng.integers(0, len(CHANNELS), m)
    subj = rng.integers(0, len(SUBJECTS), m)
    tickets: dict[int, dict[str, Any]] = {}
    for k in range(m):
        tid = TICKET_ID_BASE + k
        requester = int(truth.zendesk_user_id[owner[k]])
        status = ("closed" if closed[k] else "solved") if is_solved[k] else open_status[open_pick[k]]
        rating = None
        if is_solved[k] and score_idx[k] > 0:
            score = ("offered", "good", "bad")[score_idx[k] - 1]
            rating = {"id": 5_000_000 + k, "score": score, "comment": None, "reason": None}
        resolution = int((solved[k] - created[k]) / 60.0) if is_solved[k] else None
        tickets[tid] = {
            "id": tid,
            "requester_id": requester,
            "submitter_id": requester,
            "assignee_id": AGENT_ID_BASE + int(k % N_AGENTS) if status != "new" else None,
            "organization_id": None,
            "group_id": 360_000_001,
            "status": status,
            "priority": ("low", "normal", "high")[k % 3],
            "type": "question" if subj[k] % 2 else "problem",
            "subject": SUBJECTS[subj[k]],
            "description": f"{SUBJECTS[subj[k]]} (ticket {tid})",
            "tags": [],
            "custom_fields": [],
            "via": {"channel": CHANNELS[chan[k]]},
            "satisfaction_rating": rating,
            "created_at": created_s[k],
            "updated_at": updated_s[k],
            "generated_timestamp": int(updated[k]),
            "solved_at": solved_s[k] if is_solved[k] else None,
            "metric_set": {
                "reply_time_in_minutes": {"calendar": int(reply_min[k]), "business": int(reply_min[k])}
                if replied[k] < now
                else None,
                "full_resolution_time_in_minutes": {"calendar": resolution, "business": resolution},
                "solved_at": solved_s[k] if is_solved[k] else None,
            },
        }
    return tickets
