"""Salesforce side of the synthetic world: accounts, contacts and opportunities as REST JSON records.

Record shapes follow API-REFERENCE §1 and the sandbox spec: 18-character ids with the object's key
prefix, ``YYYY-MM-DDTHH:MM:SS.000+0000`` datetimes, ``CloseDate`` as ``YYYY-MM-DD``.  Purchases exist
only here: every customer's first purchase plus the BG/NBD repeats are ``Closed Won`` opportunities; a
share of non-won opportunities (lost or still open) is mixed in, as in a real org.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ltvsync.sandbox.world_format import sf_datetimes, sf_ids

if TYPE_CHECKING:
    from ltvsync.sandbox.world import WorldParams

CURRENCIES = ("USD", "EUR", "GBP")
# Units of USD per unit of each currency; the same defaults as ``LtvSettings.fx_rates``.
FX_TO_USD = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}
FIRST_NAMES = [
    "Ada",
    "Alan",
    "Alice",
    "Amir",
    "Ana",
    "Ben",
    "Bianca",
    "Carlos",
    "Chen",
    "Chloe",
    "Dana",
    "David",
    "Elena",
    "Emma",
    "Farah",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jack",
    "Julia",
    "Kai",
    "Kofi",
    "Lara",
    "Leo",
    "Lina",
    "Marco",
    "Maria",
    "Mei",
    "Nadia",
    "Noah",
    "Olga",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Sara",
    "Tariq",
    "Uma",
    "Victor",
    "Wei",
    "Yara",
    "Zoe",
]
LAST_NAMES = [
    "Abe",
    "Banks",
    "Costa",
    "Diaz",
    "Evans",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ito",
    "Jensen",
    "Khan",
    "Lopez",
    "Meyer",
    "Nakamura",
    "Novak",
    "Okafor",
    "Patel",
    "Quist",
    "Rossi",
    "Silva",
    "Tanaka",
    "Urban",
    "Vargas",
    "Weber",
    "Xu",
    "Young",
    "Zhang",
    "Moreau",
    "Larsen",
    "Kowalski",
]
DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example.io")


def draw_names(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
    fi = rng.integers(0, len(FIRST_NAMES), n)
    li = rng.integers(0, len(LAST_NAMES), n)
    di = rng.integers(0, len(DOMAINS), n)
    first = [FIRST_NAMES[i] for i in fi]
    last = [LAST_NAMES[i] for i in li]
    email = [
        f"{f.lower()}.{s.lower()}{i}@{DOMAINS[d]}"
        for i, (f, s, d) in enumerate(zip(first, last, di, strict=True))
    ]
    return {"first": first, "last": last, "email": email}


def salesforce_objects(
    rng: np.random.Generator,
    prm: WorldParams,
    n: int,
    signup: np.ndarray,
    first: np.ndarray,
    pur: dict[str, np.ndarray],
    names: dict[str, list[str]],
    now: float,
) -> tuple[dict[str, dict[str, dict[str, Any]]], np.ndarray]:
    n_acc = max(1, n // 3)
    acc_created = now - rng.uniform(prm.signup_window_days * 86400.0, 3 * 365 * 86400.0, n_acc)
    acc_ids = sf_ids("001", n_acc)
    acc_dt = sf_datetimes(acc_created)
    accounts = {
        aid: _sf_base(aid, acc_dt[i], acc_dt[i])
        | {"Name": f"{LAST_NAMES[i % len(LAST_NAMES)]} Household {i}"}
        for i, aid in enumerate(acc_ids)
    }
    acc_of = rng.integers(0, n_acc, n)
    con_ids = sf_ids("003", n)
    con_dt = sf_datetimes(signup)
    con_mod = sf_datetimes(np.minimum(signup + rng.exponential(30 * 86400.0, n), now - 1.0))
    contacts: dict[str, dict[str, Any]] = {}
    for i, cid in enumerate(con_ids):
        f, s = names["first"][i], names["last"][i]
        contacts[cid] = _sf_base(cid, con_dt[i], con_mod[i]) | {
            "FirstName": f,
            "LastName": s,
            "Name": f"{f} {s}",
            "Email": names["email"][i],
            "AccountId": acc_ids[acc_of[i]],
            "LTV__c": None,
            "LTV_Predicted__c": None,
            "P_Alive__c": None,
            "LTV_Tags__c": None,
            "LTV_Updated__c": None,
        }
    # Won opportunities: the first purchase of everyone plus the BG/NBD repeats.
    owner = np.concatenate([np.arange(n), pur["repeat_owner"]])
    when = np.concatenate([first, pur["repeat_time"]])
    amount_usd = rng.gamma(prm.p, 1.0 / pur["nu"][owner])
    cur_idx = rng.choice(3, n, p=list(prm.currency_shares))[owner]
    n_lost = round(prm.lost_opportunity_share * len(owner))
    lost_owner = rng.integers(0, n, n_lost)
    lost_when = rng.uniform(signup[lost_owner], now - 1.0)
    all_owner = np.concatenate([owner, lost_owner])
    all_when = np.concatenate([when, lost_when])
    all_usd = np.concatenate([amount_usd, rng.gamma(prm.p, 1.0 / pur["nu"][lost_owner])])
    all_cur = np.concatenate([cur_idx, rng.choice(3, n_lost, p=list(prm.currency_shares))])
    won = np.arange(len(all_owner)) < len(owner)
    order = np.argsort(all_when, kind="stable")
    created = sf_datetimes(
        np.maximum(all_when - rng.uniform(0, 3 * 86400.0, len(all_when)), signup[all_owner])
    )
    modified = sf_datetimes(np.minimum(all_when + rng.uniform(0, 3600.0, len(all_when)), now - 1.0))
    close = [s[:10] for s in sf_datetimes(all_when)]
    lost_stages = ("Closed Lost", "Prospecting", "Negotiation/Review")
    stage_pick = rng.integers(0, 3, len(all_owner))
    opps: dict[str, dict[str, Any]] = {}
    opp_ids = sf_ids("006", len(order))
    for seq, j in enumerate(order):
        oid = opp_ids[seq]
        c = int(all_owner[j])
        cur = CURRENCIES[all_cur[j]]
        stage = "Closed Won" if won[j] else lost_stages[stage_pick[j]]
        opps[oid] = _sf_base(oid, created[j], modified[j]) | {
            "Name": f"{names['last'][c]} order {seq}",
            "ContactId": con_ids[c],
            "AccountId": acc_ids[acc_of[c]],
            "Amount": round(float(all_usd[j]) / FX_TO_USD[cur], 2),
            "CloseDate": close[j],
            "StageName": stage,
            "IsWon": bool(won[j]),
            "IsClosed": stage.startswith("Closed"),
            "CurrencyIsoCode": cur,
        }
    return {"Account": accounts, "Contact": contacts, "Opportunity": opps}, amount_usd[:n]


def _sf_base(rid: str, created: str, modified: str) -> dict[str, Any]:
    return {
        "Id": rid,
        "CreatedDate": created,
        "LastModifiedDate": modified,
        "SystemModstamp": modified,
        "IsDeleted": False,
    }
