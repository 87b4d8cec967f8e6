"""The sObject schema the Salesforce emulator describes, and the wire conversions it needs.

Field lists follow the shared sandbox spec (Contact, Opportunity, Account plus the LTV custom fields);
describe shapes follow Salesforce REST "sObject Describe" (name, type, label, custom, updateable,
nillable, length, externalId, idLookup).  Datetimes on the wire are ``YYYY-MM-DDTHH:MM:SS.000+0000``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ltvsync.sandbox.http import Request, Response

KEY_PREFIXES = {"Account": "001", "Contact": "003", "Opportunity": "006", "User": "005"}
STRING_LENGTH = 255
# Fields the platform maintains: clients may never write them.
SYSTEM_FIELDS = frozenset({"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"})


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    label: str
    updateable: bool = True
    nillable: bool = True
    length: int = 0
    id_lookup: bool = False
    external_id: bool = False

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "custom": self.custom,
            "updateable": self.updateable,
            "createable": self.updateable,
            "nillable": self.nillable,
            "length": self.length,
            "externalId": self.external_id,
            "idLookup": self.id_lookup,
            "precision": 18 if self.type == "currency" else 0,
            "scale": 2 if self.type in ("currency", "percent") else 0,
        }


def _system(prefix_fields: list[FieldSpec]) -> list[FieldSpec]:
    return [
        FieldSpec("Id", "id", "Record ID", updateable=False, nillable=False, length=18, id_lookup=True),
        *prefix_fields,
        FieldSpec("CreatedDate", "datetime", "Created Date", updateable=False, nillable=False),
        FieldSpec("LastModifiedDate", "datetime", "Last Modified Date", updateable=False, nillable=False),
        FieldSpec("SystemModstamp", "datetime", "System Modstamp", updateable=False, nillable=False),
        FieldSpec("IsDeleted", "boolean", "Deleted", updateable=False, nillable=False),
    ]


SCHEMA: dict[str, list[FieldSpec]] = {
    "Account": _system([FieldSpec("Name", "string", "Account Name", nillable=False, length=STRING_LENGTH)]),
    "Contact": _system(
        [
            FieldSpec("FirstName", "string", "First Name", length=40),
            FieldSpec("LastName", "string", "Last Name", nillable=False, length=80),
            FieldSpec("Name", "string", "Full Name", updateable=False, length=121),
            FieldSpec("Email", "email", "Email", length=80, id_lookup=True),
            FieldSpec("AccountId", "reference", "Account ID", length=18),
            FieldSpec("LTV__c", "currency", "LTV"),
            FieldSpec("LTV_Predicted__c", "currency", "LTV Predicted"),
            FieldSpec("P_Alive__c", "percent", "P(alive)"),
            FieldSpec("LTV_Tags__c", "textarea", "LTV Tags", length=STRING_LENGTH),
            FieldSpec("LTV_Updated__c", "datetime", "LTV Updated"),
        ]
    ),
    "Opportunity": _system(
        [
            FieldSpec("Name", "string", "Name", nillable=False, length=120),
            FieldSpec("ContactId", "reference", "Contact ID", length=18),
            FieldSpec("AccountId", "reference", "Account ID", length=18),
            FieldSpec("Amount", "currency", "Amount"),
            FieldSpec("CloseDate", "date", "Close Date", nillable=False),
            FieldSpec("StageName", "string", "Stage", nillable=False, length=255),
            FieldSpec("IsWon", "boolean", "Won", updateable=False, nillable=False),
            FieldSpec("IsClosed", "boolean", "Closed", updateable=False, nillable=False),
            FieldSpec("CurrencyIsoCode", "string", "Currency ISO Code", length=3),
        ]
    ),
}
REQUIRED_ON_CREATE = {"Account": ("Name",), "Contact": ("LastName",), "Opportunity": ("Name", "CloseDate")}


def sf_datetime(moment: datetime) -> str:
    """Salesforce's wire datetime: ``2024-05-20T20:49:32.000+0000`` (always UTC)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def infer_type(value: Any) -> str:
    """Describe type for a field that only appears in the data (world extras beyond SCHEMA)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "double"
    return "string"


def check_value(spec: FieldSpec, value: Any) -> tuple[str, str] | None:
    """Validate one written value; returns ``(statusCode, message)`` or None when acceptable."""
    if value is None:
        if not spec.nillable:
            return "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{spec.name}]"
        return None
    numeric = spec.type in ("currency", "percent", "double")
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
        return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: value not of required type: {value!r}"
    if spec.type == "boolean" and not isinstance(value, bool):
        return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: value not of required type: {value!r}"
    if spec.type in ("string", "textarea", "email", "reference", "id") and not isinstance(value, str):
        return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: value not of required type: {value!r}"
    if isinstance(value, str) and spec.length and len(value) > spec.length:
        return (
            "STRING_TOO_LONG",
            f"{spec.label}: data value too large: {value[:40]!r}... (max length={spec.length})",
        )
    if spec.type in ("datetime", "date"):
        if not isinstance(value, str):
            return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: value not of required type: {value!r}"
        try:
            normalize(spec, value)
        except ValueError:
            return "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: invalid {spec.type}: {value!r}"
    return None


def normalize(spec: FieldSpec, value: Any) -> Any:
    """The value as Salesforce stores and returns it: datetimes in UTC ``.000+0000`` form (a value
    without an offset is UTC), dates as ``YYYY-MM-DD``; raises ValueError for unparsable ones."""
    if not isinstance(value, str) or spec.type not in ("datetime", "date"):
        return value
    if spec.type == "date":
        return date.fromisoformat(value).isoformat()
    text = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    moment = datetime.fromisoformat(text)
    return sf_datetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def from_csv(spec: FieldSpec, raw: str) -> tuple[bool, Any]:
    """Bulk 2.0 CSV cell → (present, value): empty means "leave unchanged", ``#N/A`` means null."""
    if raw == "":
        return False, None
    if raw == "#N/A":
        return True, None
    if spec.type in ("currency", "percent", "double"):
        try:
            return True, float(raw)
        except ValueError:
            return True, raw  # check_value reports the bad type per record
    if spec.type == "boolean":
        return True, raw.lower() == "true" if raw.lower() in ("true", "false") else raw
    return True, raw


def to_csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sf_error(status: int, code: str, message: str) -> Response:
    """A top-level REST error: a JSON *list* with ``errorCode`` (simple-salesforce indexes ``[0]``)."""
    return Response.json([{"message": message, "errorCode": code}], status)


def json_object(req: Request) -> dict[str, Any] | None:
    """The request body if it is a JSON object, else None (the caller answers JSON_PARSER_ERROR)."""
    try:
        body = req.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
