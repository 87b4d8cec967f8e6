"""The Salesforce emulator's record store: validation and application of client and admin writes.

One code path for every write (REST single record, sObject Collections, Bulk 2.0 rows) so their
per-record outcomes agree.  Error codes and messages follow Salesforce REST "Status Codes and Error
Responses" and sObject Collections docs (``statusCode``/``message``/``fields`` per record).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ltvsync.sandbox.salesforce_schema import (
    KEY_PREFIXES,
    REQUIRED_ON_CREATE,
    SCHEMA,
    SYSTEM_FIELDS,
    FieldSpec,
    check_value,
    infer_type,
    normalize,
    sf_datetime,
)

CLIENT = "client"
ADMIN = "admin"


@dataclass(frozen=True)
class WriteError:
    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def wire(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": list(self.fields)}


@dataclass
class Plan:
    """One validated write waiting to be applied (``op`` is create, update or delete)."""

    op: str
    obj: str
    record_id: str | None
    fields: dict[str, Any] = field(default_factory=dict)


class SalesforceStore:
    """sObjects by name → Id → wire record, plus the field specs each object exposes."""

    def __init__(self, objects: dict[str, dict[str, dict[str, Any]]], clock: Callable[[], datetime]) -> None:
        # Salesforce records are flat (scalar values), so a copy per record is a full copy and
        # ~10x cheaper than deepcopy on a 5,000-contact world.
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            name: {rid: dict(record) for rid, record in records.items()} for name, records in objects.items()
        }
        for name in SCHEMA:
            self.objects.setdefault(name, {})
        self.clock = clock
        self.lock = threading.RLock()
        self.fail_records: dict[str, tuple[str, str]] = {}
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.last_writer: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.specs: dict[str, dict[str, FieldSpec]] = {}
        for name, records in self.objects.items():
            specs = {f.name.lower(): f for f in SCHEMA.get(name, [])}
            for record in records.values():
                for key, value in record.items():
                    if key != "attributes" and key.lower() not in specs:
                        specs[key.lower()] = FieldSpec(key, infer_type(value), key, length=0)
            self.specs[name] = specs

    # -- names ---------------------------------------------------------------------------------
    def object_name(self, name: str) -> str | None:
        lowered = name.lower()
        return next((o for o in self.objects if o.lower() == lowered), None)

    def spec(self, obj: str, name: str) -> FieldSpec | None:
        return self.specs.get(obj, {}).get(name.lower())

    def types(self, obj: str) -> dict[str, str]:
        return {s.name: s.type for s in self.specs.get(obj, {}).values()}

    def new_id(self, obj: str) -> str:
        prefix = KEY_PREFIXES.get(obj, "a00")
        return f"{prefix}SBX{next(self._ids):09d}AAA"

    # -- planning (validation, no side effects) -------------------------------------------------
    def _check_fields(
        self, obj: str, raw: dict[str, Any], creating: bool
    ) -> tuple[dict[str, Any], WriteError | None]:
        clean: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("attributes", "id", "Id"):
                continue
            spec = self.spec(obj, key)
            if spec is None:
                return clean, WriteError(
                    "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj}", (key,)
                )
            if not spec.updateable or spec.name in SYSTEM_FIELDS:
                return clean, WriteError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {spec.name}. Please check the security settings "
                    "of this field and verify that it is read/write for your profile or permission set.",
                    (spec.name,),
                )
            problem = check_value(spec, value)
            if problem is not None:
                return clean, WriteError(problem[0], problem[1], (spec.name,))
            clean[spec.name] = normalize(spec, value)
        if creating:
            missing = [f for f in REQUIRED_ON_CREATE.get(obj, ()) if clean.get(f) in (None, "")]
            if missing:
                return clean, WriteError(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: {missing}", tuple(missing)
                )
        return clean, None

    def _existing(self, obj: str, record_id: str) -> WriteError | None:
        record = self.objects[obj].get(record_id)
        if record is None:
            return WriteError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {record_id}")
        if record.get("IsDeleted"):
            return WriteError("ENTITY_IS_DELETED", "entity is deleted")
        if record_id in self.fail_records:
            code, message = self.fail_records[record_id]
            return WriteError(code, message)
        return None

    def plan_update(self, obj: str, record_id: str, raw: dict[str, Any]) -> Plan | WriteError:
        problem = self._existing(obj, record_id)
        if problem is not None:
            return problem
        clean, error = self._check_fields(obj, raw, creating=False)
        return error or Plan("update", obj, record_id, clean)

    def plan_create(self, obj: str, raw: dict[str, Any]) -> Plan | WriteError:
        clean, error = self._check_fields(obj, raw, creating=True)
        return error or Plan("create", obj, None, clean)

    def plan_delete(self, obj: str, record_id: str) -> Plan | WriteError:
        return self._existing(obj, record_id) or Plan("delete", obj, record_id)

    def plan_upsert(self, obj: str, ext_field: FieldSpec, raw: dict[str, Any]) -> Plan | WriteError:
        key = next((k for k in raw if k.lower() == ext_field.name.lower()), None)
        value = raw.get(key) if key is not None else None
        if value in (None, ""):
            return WriteError("MISSING_ARGUMENT", f"{ext_field.name} not specified", (ext_field.name,))
        if ext_field.name == "Id":
            return self.plan_update(obj, str(value), raw)
        wanted = _fold(value)
        hits = [
            rid
            for rid, rec in self.objects[obj].items()
            if not rec.get("IsDeleted") and _fold(rec.get(ext_field.name)) == wanted
        ]
        if len(hits) > 1:
            return WriteError(
                "DUPLICATE_EXTERNAL_ID",
                f"{ext_field.name}: more than one record found for external id",
                (ext_field.name,),
            )
        if hits:
            return self.plan_update(obj, hits[0], raw)
        return self.plan_create(obj, raw)

    # -- application ---------------------------------------------------------------------------
    def apply(self, plan: Plan, writer: str = CLIENT) -> str:
        """Apply a validated plan; returns the record id (new for creates)."""
        stamp = sf_datetime(self.clock())
        records = self.objects[plan.obj]
        if plan.op == "create":
            record_id = self.new_id(plan.obj)
            record: dict[str, Any] = {s.name: None for s in self.specs[plan.obj].values()}
            record.update(Id=record_id, CreatedDate=stamp, IsDeleted=False)
            records[record_id] = record
        else:
            assert plan.record_id is not None
            record_id = plan.record_id
            record = records[record_id]
        if plan.op == "delete":
            record["IsDeleted"] = True
        record.update(plan.fields)
        if plan.obj == "Contact" and ({"FirstName", "LastName"} & plan.fields.keys() or plan.op == "create"):
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        if plan.obj == "Opportunity" and ("StageName" in plan.fields or plan.op == "create"):
            # Formula-like flags the platform derives from the stage (standard stage names).
            stage = str(record.get("StageName") or "")
            record["IsWon"] = stage == "Closed Won"
            record["IsClosed"] = stage.startswith("Closed")
        record["LastModifiedDate"] = stamp
        record["SystemModstamp"] = stamp
        self.last_writer[record_id] = writer
        if writer == CLIENT:
            self.writes.append(
                (plan.obj, record_id, dict(plan.fields) if plan.op != "delete" else {"IsDeleted": True})
            )
        return record_id


def _fold(value: Any) -> Any:
    """External-id and idLookup matches (Email) ignore case on Salesforce."""
    return value.casefold() if isinstance(value, str) else value
