"""Injected dirt: the bad records a loader must normalize, merge, de-duplicate or quarantine.

Each injected defect is listed as a :class:`Dirt` (system, object, id, kind) so tests can compute
exactly which records a loader must quarantine (``QUARANTINE_KINDS``), which it must repair
(``REPAIRABLE_KINDS``) and which cannot be linked across systems (``UNLINKABLE_KINDS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ltvsync.sandbox.world_format import sf_id

if TYPE_CHECKING:
    from ltvsync.sandbox.world import World

# A purchase with one of these defects cannot be valued; a correct loader quarantines it.
QUARANTINE_KINDS = frozenset({"null_amount", "negative_amount", "unknown_currency", "malformed_date"})
# Fixable in place: trim/lower-case the email, merge the duplicate contact, drop the repeated event.
REPAIRABLE_KINDS = frozenset({"email_case_space", "duplicate_contact", "duplicate_event"})
# Records kept by their source id but impossible to join to other systems by email.
UNLINKABLE_KINDS = frozenset({"missing_email"})
UNKNOWN_CURRENCIES = ("XYZ", "ABC", "US$")
MALFORMED_DATES = ("2024-02-30", "not-a-date", "2023-13-01", "")


@dataclass(frozen=True)
class Dirt:
    system: str  # "salesforce" | "mixpanel" | "zendesk"
    object: str  # "Contact", "Opportunity", "event", "profile", "user"
    id: str  # record id as a string (Mixpanel events: the $insert_id)
    kind: str


def _pick(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return np.flatnonzero(rng.random(n) < rate) if rate > 0 else np.zeros(0, dtype=np.int64)


def messy_email(rng: np.random.Generator, email: str) -> str:
    """Same address, different case and surrounding whitespace (normalizes back to ``email``)."""
    mixed = "".join(c.upper() if rng.random() < 0.4 else c for c in email)
    if mixed == email:
        mixed = email.upper()
    return f"{' ' * int(rng.integers(1, 3))}{mixed}{' ' * int(rng.integers(0, 3))}"


def apply_dirt(world: World, rng: np.random.Generator, rate: float) -> list[Dirt]:
    """Mutate ``world`` in place and return the list of injected defects."""
    dirt: list[Dirt] = []
    dirt += _contacts(world, rng, rate)
    dirt += _opportunities(world, rng, rate)
    dirt += _events(world, rng, rate)
    dirt += _email_records(rng, rate, "mixpanel", "profile", world.mixpanel_profiles)
    users = [u for u in world.zendesk_users.values() if u["role"] == "end-user"]
    dirt += _email_records(rng, rate, "zendesk", "user", users)
    return dirt


def _contacts(world: World, rng: np.random.Generator, rate: float) -> list[Dirt]:
    contacts = world.salesforce["Contact"]
    opps_by_contact: dict[str, list[dict[str, Any]]] = {}
    for opp in world.salesforce["Opportunity"].values():
        opps_by_contact.setdefault(opp["ContactId"], []).append(opp)
    ids = list(contacts)
    out: list[Dirt] = []
    next_serial = len(ids)
    for i in _pick(rng, len(ids), rate):
        cid = ids[i]
        rec = contacts[cid]
        kind = ("email_case_space", "missing_email", "duplicate_contact")[int(rng.integers(0, 3))]
        if kind == "email_case_space":
            rec["Email"] = messy_email(rng, rec["Email"])
            out.append(Dirt("salesforce", "Contact", cid, kind))
        elif kind == "missing_email":
            rec["Email"] = None
            out.append(Dirt("salesforce", "Contact", cid, kind))
        else:
            dup_id = sf_id("003", next_serial)
            next_serial += 1
            dup = dict(rec, Id=dup_id, Email=rec["Email"].upper())
            dup["CreatedDate"] = dup["LastModifiedDate"] = dup["SystemModstamp"] = rec["LastModifiedDate"]
            contacts[dup_id] = dup
            # The same person bought under both records; a loader that merges by email sees it all.
            for j, opp in enumerate(opps_by_contact.get(cid, [])):
                if j % 2 == 1:
                    opp["ContactId"] = dup_id
            out.append(Dirt("salesforce", "Contact", dup_id, kind))
    return out


def _opportunities(world: World, rng: np.random.Generator, rate: float) -> list[Dirt]:
    opps = world.salesforce["Opportunity"]
    won = [oid for oid, o in opps.items() if o["IsWon"]]
    out: list[Dirt] = []
    for i in _pick(rng, len(won), rate):
        rec = opps[won[i]]
        kind = sorted(QUARANTINE_KINDS)[int(rng.integers(0, len(QUARANTINE_KINDS)))]
        if kind == "null_amount":
            rec["Amount"] = None
        elif kind == "negative_amount":
            rec["Amount"] = -abs(rec["Amount"]) or -1.0
        elif kind == "unknown_currency":
            rec["CurrencyIsoCode"] = UNKNOWN_CURRENCIES[int(rng.integers(0, len(UNKNOWN_CURRENCIES)))]
        else:
            rec["CloseDate"] = MALFORMED_DATES[int(rng.integers(0, len(MALFORMED_DATES)))]
        out.append(Dirt("salesforce", "Opportunity", rec["Id"], kind))
    return out


def _events(world: World, rng: np.random.Generator, rate: float) -> list[Dirt]:
    """Duplicate deliveries: an identical copy (same ``$insert_id``) right after the original."""
    events = world.mixpanel_events
    picks = set(_pick(rng, len(events), rate).tolist())
    if not picks:
        return []
    out: list[Dirt] = []
    merged: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        merged.append(ev)
        if i in picks:
            merged.append({"event": ev["event"], "properties": dict(ev["properties"])})
            out.append(Dirt("mixpanel", "event", ev["properties"]["$insert_id"], "duplicate_event"))
    world.mixpanel_events[:] = merged
    return out


def _email_records(
    rng: np.random.Generator, rate: float, system: str, obj: str, records: list[dict[str, Any]]
) -> list[Dirt]:
    out: list[Dirt] = []
    for i in _pick(rng, len(records), rate):
        rec = records[i]
        holder = rec["$properties"] if system == "mixpanel" else rec
        key = "$email" if system == "mixpanel" else "email"
        rid = str(rec["$distinct_id"] if system == "mixpanel" else rec["id"])
        if rng.random() < 0.5 and holder.get(key):
            holder[key] = messy_email(rng, holder[key])
            out.append(Dirt(system, obj, rid, "email_case_space"))
        else:
            holder[key] = None
            out.append(Dirt(system, obj, rid, "missing_email"))
    return out
