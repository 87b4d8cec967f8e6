"""Salesforce REST emulator over TLS: SOQL query/queryAll with paging, describe, single-record and
sObject Collections writes, Bulk 2.0 (see ``salesforce_bulk``), API-usage accounting and OAuth token.

Speaks what simple-salesforce 1.12.10 sends and expects (API-REFERENCE §1): bearer session ids,
error bodies as JSON *lists* with ``errorCode``, ``Sforce-Limit-Info`` on every answer, ``nextRecordsUrl``
as a path, per-record collection results in input order.  Vendor docs: developer.salesforce.com
api-rest resources-query, resources-query-more-results, resources-composite-sobjects-collections-*,
errorcodes, headers_api_usage, dome_limits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ltvsync.sandbox import soql
from ltvsync.sandbox.http import Emulator, Knobs, Request, Response
from ltvsync.sandbox.salesforce_admin import register_admin_routes
from ltvsync.sandbox.salesforce_bulk import BulkJobs, register_bulk_routes
from ltvsync.sandbox.salesforce_schema import KEY_PREFIXES, json_object, sf_error
from ltvsync.sandbox.salesforce_store import ADMIN, CLIENT, Plan, SalesforceStore, WriteError
from ltvsync.sandbox.tls import SandboxTLS, make_tls

DEFAULT_BATCH_SIZE = 2000  # records per query page unless Sforce-Query-Options lowers it
MIN_BATCH_SIZE = 200
COLLECTIONS_MAX = 200  # sObject Collections records per request
BUDGET_PERIOD = timedelta(hours=24)  # the daily API request allocation
API = r"/services/data/v(?P<ver>\d+\.\d+)"
ROLLED_BACK = WriteError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone header",
)


class SalesforceEmulator(Emulator):
    """A Salesforce org in memory; start with :meth:`start_tls` (simple-salesforce needs https)."""

    name = "salesforce"
    bulk: BulkJobs

    def __init__(
        self,
        objects: dict[str, dict[str, dict[str, Any]]],
        knobs: Knobs | None = None,
        *,
        daily_budget: int = 100_000,
        clock: Callable[[], datetime] | None = None,
        session_id: str = "sandbox-session",
    ) -> None:
        super().__init__(knobs)
        self.clock = clock or (lambda: datetime.now(UTC))
        # Through a lambda so a test replacing ``self.clock`` moves the store's timestamps too.
        self.store = SalesforceStore(objects, lambda: self.clock())
        self.daily_budget = daily_budget
        self.api_used = 0
        self._budget_since = self.clock()
        self.session_id = session_id
        self.ca_path: str | None = None
        self._cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self._locators = itertools.count(1)
        self._register()

    # -- admin handles (Python) ------------------------------------------------------------------
    @property
    def fail_records(self) -> dict[str, tuple[str, str]]:
        return self.store.fail_records

    @property
    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        return self.store.writes

    @property
    def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.store.objects

    def add(self, obj: str, fields: dict[str, Any]) -> str:
        """Create a record as "someone else" (not logged in ``writes``); system fields are filled in."""
        with self._lock:
            system = {k: v for k, v in fields.items() if k in ("Name", "IsWon", "IsClosed")}
            plan = Plan("create", obj, None, {k: v for k, v in fields.items() if k not in system})
            record_id = self.store.apply(plan, ADMIN)
            self.store.objects[obj][record_id].update(system)
            return record_id

    def modify(self, obj: str, record_id: str, fields: dict[str, Any]) -> None:
        """An edit by someone other than ltvsync: bumps SystemModstamp/LastModifiedDate to clock()."""
        with self._lock:
            self.store.apply(Plan("update", obj, record_id, dict(fields)), ADMIN)

    def delete(self, obj: str, record_id: str) -> None:
        with self._lock:
            self.store.apply(Plan("delete", obj, record_id), ADMIN)

    def record(self, obj: str, record_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.store.objects[obj][record_id])

    def reset_usage(self) -> None:
        with self._lock:
            self.api_used = 0
            self._budget_since = self.clock()

    # -- server ----------------------------------------------------------------------------------
    def start_tls(self, port: int = 0, tls: SandboxTLS | None = None) -> str:
        """Serve https on 127.0.0.1 with a throwaway CA (``self.ca_path``); returns the base URL."""
        tls = tls or make_tls()
        self.ca_path = tls.ca_path
        return self.start(port, tls.context)

    def server_error(self) -> Response:
        resp = sf_error(503, "SERVER_UNAVAILABLE", "injected fault")
        resp.headers["Sforce-Limit-Info"] = self._usage()
        return resp

    def rate_limited(self, retry_after: float) -> Response:
        resp = super().rate_limited(retry_after)
        resp.headers["Sforce-Limit-Info"] = self._usage()
        return resp

    def _spend(self) -> bool:
        """Count one request against the daily budget; False when it is exhausted.

        The budget is a 24-hour allocation: it refills when ``clock()`` has moved a day past the
        start of the current period (a step approximation of Salesforce's rolling window)."""
        with self._lock:
            now = self.clock()
            if now - self._budget_since >= BUDGET_PERIOD:
                self._budget_since, self.api_used = now, 0
            if self.api_used >= self.daily_budget:
                return False
            self.api_used += 1
            return True

    def _usage(self) -> str:
        return f"api-usage={self.api_used}/{self.daily_budget}"

    def api_route(self, method: str, pattern: str, name: str, handler: Callable[..., Response]) -> None:
        """Register a REST route behind bearer auth and the daily request budget."""

        def guarded(req: Request, **groups: str) -> Response:
            if req.header("authorization") != f"Bearer {self.session_id}":
                resp = sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
            elif not self._spend():
                resp = sf_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            else:
                with self._lock:
                    resp = handler(req, **groups)
            resp.headers["Sforce-Limit-Info"] = self._usage()
            return resp

        self.route(method, pattern, name, guarded)

    def _register(self) -> None:
        self.api_route("GET", API + r"/query/?", "query", lambda r, ver: self._query(r, ver, False))
        self.api_route("GET", API + r"/queryAll/?", "queryAll", lambda r, ver: self._query(r, ver, True))
        # A queryAll's nextRecordsUrl says query/ too; Salesforce accepts the locator under either path.
        more = r"/(?:query|queryAll)/(?P<loc>[A-Za-z0-9]+)-(?P<off>\d+)"
        self.api_route("GET", API + more, "query_more", self._query_more)
        self.api_route("GET", API + r"/limits/?", "limits", self._limits)
        self.api_route("GET", API + r"/sobjects/?", "describe_global", self._describe_global)
        self.api_route("GET", API + r"/sobjects/(?P<obj>\w+)/describe/?", "describe", self._describe)
        self.api_route("GET", API + r"/sobjects/(?P<obj>\w+)/(?P<rid>\w+)", "record_get", self._get)
        self.api_route("PATCH", API + r"/sobjects/(?P<obj>\w+)/(?P<rid>\w+)", "record_patch", self._patch)
        self.api_route("POST", API + r"/sobjects/(?P<obj>\w+)/?", "record_create", self._create)
        self.api_route("DELETE", API + r"/sobjects/(?P<obj>\w+)/(?P<rid>\w+)", "record_delete", self._delete)
        self.api_route("POST", API + r"/composite/sobjects/?", "collections_create", self._coll_create)
        self.api_route("PATCH", API + r"/composite/sobjects/?", "collections_update", self._coll_update)
        self.api_route(
            "PATCH",
            API + r"/composite/sobjects/(?P<obj>\w+)/(?P<ext>\w+)",
            "collections_upsert",
            self._coll_upsert,
        )
        register_bulk_routes(self)
        register_admin_routes(self)

    # -- query -----------------------------------------------------------------------------------
    def _resolve(self, obj: str, name: str) -> str:
        if not name:
            canonical = self.store.object_name(obj)
            if canonical is None:
                raise soql.SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
            return canonical
        spec = self.store.spec(obj, name)
        if spec is None:
            raise soql.SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{obj}'.")
        return spec.name

    def run_soql(self, text: str, include_deleted: bool) -> tuple[soql.Query, list[dict[str, Any]]]:
        """Parse and run ``text`` over the store; raises :class:`soql.SoqlError`. Caller holds the lock."""
        query = soql.parse(text, self._resolve)
        pool = [
            r for r in self.store.objects[query.obj].values() if include_deleted or not r.get("IsDeleted")
        ]
        return query, soql.run(query, pool, self.store.types(query.obj))

    def _query(self, req: Request, ver: str, include_deleted: bool) -> Response:
        text = req.arg("q")
        if not text:
            return sf_error(400, "MALFORMED_QUERY", "query string parameter q is required")
        try:
            query, rows = self.run_soql(text, include_deleted)
        except soql.SoqlError as exc:
            return sf_error(400, exc.code, exc.message)
        if query.count_only:
            return Response.json({"totalSize": len(rows), "done": True, "records": []})
        projected = [self._project(query.obj, ver, r, query.fields) for r in rows]
        locator = f"01gSBX{next(self._locators):09d}"
        self._cursors[locator] = (projected, self._batch_size(req))
        return self._page(ver, locator, 0)

    def _batch_size(self, req: Request) -> int:
        options = req.header("sforce-query-options") or ""
        for part in options.split(","):
            key, _, value = part.partition("=")
            if key.strip().lower() == "batchsize" and value.strip().isdigit():
                return max(MIN_BATCH_SIZE, min(DEFAULT_BATCH_SIZE, int(value)))
        return DEFAULT_BATCH_SIZE

    def _project(self, obj: str, ver: str, record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/v{ver}/sobjects/{obj}/{record['Id']}"}
        }
        out.update({f: record.get(f) for f in fields})
        return out

    def _page(self, ver: str, locator: str, offset: int) -> Response:
        rows, batch = self._cursors[locator]
        end = offset + batch
        body: dict[str, Any] = {"totalSize": len(rows), "done": end >= len(rows), "records": rows[offset:end]}
        if end < len(rows):
            body["nextRecordsUrl"] = f"/services/data/v{ver}/query/{locator}-{end}"
        else:
            self._cursors.pop(locator, None)  # a finished cursor is gone, as on Salesforce
        return Response.json(body)

    def _query_more(self, req: Request, ver: str, loc: str, off: str) -> Response:
        if loc not in self._cursors or int(off) >= len(self._cursors[loc][0]):
            return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(ver, loc, int(off))

    # -- describe --------------------------------------------------------------------------------
    def _limits(self, req: Request, ver: str) -> Response:
        remaining = max(0, self.daily_budget - self.api_used)
        return Response.json({"DailyApiRequests": {"Max": self.daily_budget, "Remaining": remaining}})

    def _describe_global(self, req: Request, ver: str) -> Response:
        sobjects = [
            {
                "name": name,
                "label": name,
                "custom": name.endswith("__c"),
                "keyPrefix": KEY_PREFIXES.get(name),
                "queryable": True,
                "updateable": True,
                "urls": {
                    "sobject": f"/services/data/v{ver}/sobjects/{name}",
                    "describe": f"/services/data/v{ver}/sobjects/{name}/describe",
                },
            }
            for name in sorted(self.store.objects)
        ]
        return Response.json({"encoding": "UTF-8", "maxBatchSize": COLLECTIONS_MAX, "sobjects": sobjects})

    def _describe(self, req: Request, ver: str, obj: str) -> Response:
        name = self.store.object_name(obj)
        if name is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        fields = [s.describe() for s in self.store.specs[name].values()]
        return Response.json(
            {
                "name": name,
                "label": name,
                "custom": name.endswith("__c"),
                "keyPrefix": KEY_PREFIXES.get(name),
                "fields": fields,
            }
        )

    # -- single record ---------------------------------------------------------------------------
    def _get(self, req: Request, ver: str, obj: str, rid: str) -> Response:
        name = self.store.object_name(obj)
        record = self.store.objects[name].get(rid) if name else None
        if name is None or record is None or record.get("IsDeleted"):
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = [f.strip() for f in (req.arg("fields") or "").split(",") if f.strip()]
        try:
            fields = tuple(self._resolve(name, f) for f in wanted) or tuple(record)
        except soql.SoqlError as exc:
            return sf_error(400, exc.code, exc.message)
        return Response.json(self._project(name, ver, record, fields))

    def _patch(self, req: Request, ver: str, obj: str, rid: str) -> Response:
        name = self.store.object_name(obj)
        body = json_object(req)
        if name is None or name not in self.store.objects or rid not in self.store.objects[name]:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if body is None:
            return sf_error(400, "JSON_PARSER_ERROR", "request body must be a JSON object")
        return self._apply_single(self.store.plan_update(name, rid, body))

    def _create(self, req: Request, ver: str, obj: str) -> Response:
        name, body = self.store.object_name(obj), json_object(req)
        if name is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if body is None:
            return sf_error(400, "JSON_PARSER_ERROR", "request body must be a JSON object")
        return self._apply_single(self.store.plan_create(name, body))

    def _delete(self, req: Request, ver: str, obj: str, rid: str) -> Response:
        name = self.store.object_name(obj)
        if name is None or rid not in self.store.objects[name]:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        return self._apply_single(self.store.plan_delete(name, rid))

    def _apply_single(self, plan: Plan | WriteError) -> Response:
        """One-record REST write: 400 with the error list, 201 with the new id, or 204."""
        if isinstance(plan, WriteError):
            return Response.json(
                [{"message": plan.message, "errorCode": plan.status_code, "fields": list(plan.fields)}], 400
            )
        record_id = self.store.apply(plan, CLIENT)
        if plan.op == "create":
            return Response.json({"id": record_id, "success": True, "errors": []}, 201)
        return Response(204, b"", {}, None)

    def not_found(self, req: Request) -> Response:
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist")

    # -- sObject Collections ---------------------------------------------------------------------
    def _collection_body(self, req: Request) -> tuple[list[dict[str, Any]], bool] | Response:
        body = json_object(req)
        records = body.get("records") if body is not None else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return sf_error(400, "JSON_PARSER_ERROR", "expected an object with a 'records' array of objects")
        if len(records) > COLLECTIONS_MAX:
            return sf_error(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {COLLECTIONS_MAX} records into this call",
            )
        return records, bool(body.get("allOrNone", False)) if body is not None else False

    def _object_of(self, record: dict[str, Any]) -> str | WriteError:
        attrs = record.get("attributes")
        obj = self.store.object_name(str(attrs.get("type"))) if isinstance(attrs, dict) else None
        if obj is None:
            return WriteError("INVALID_TYPE", "sObject type is missing or not supported in attributes.type")
        return obj

    def _coll_create(self, req: Request, ver: str) -> Response:
        def plan(rec: dict[str, Any]) -> Plan | WriteError:
            obj = self._object_of(rec)
            return obj if isinstance(obj, WriteError) else self.store.plan_create(obj, rec)

        return self._run_collection(req, plan, upsert=False)

    def _coll_update(self, req: Request, ver: str) -> Response:
        def plan(rec: dict[str, Any]) -> Plan | WriteError:
            obj = self._object_of(rec)
            if isinstance(obj, WriteError):
                return obj
            rid = rec.get("id") or rec.get("Id")
            if not isinstance(rid, str) or not rid:
                return WriteError("MISSING_ARGUMENT", "Id not specified in an update call")
            return self.store.plan_update(obj, rid, rec)

        return self._run_collection(req, plan, upsert=False)

    def _coll_upsert(self, req: Request, ver: str, obj: str, ext: str) -> Response:
        name = self.store.object_name(obj)
        spec = self.store.spec(name, ext) if name else None
        if name is None or spec is None or not (spec.name == "Id" or spec.external_id or spec.id_lookup):
            return sf_error(
                400,
                "INVALID_FIELD",
                f"Field name provided, {ext} is not an External ID or indexed field for {obj}",
            )
        return self._run_collection(req, lambda rec: self.store.plan_upsert(name, spec, rec), upsert=True)

    def _run_collection(
        self, req: Request, planner: Callable[[dict[str, Any]], Plan | WriteError], *, upsert: bool
    ) -> Response:
        parsed = self._collection_body(req)
        if isinstance(parsed, Response):
            return parsed
        records, all_or_none = parsed
        plans = [planner(rec) for rec in records]
        failed = any(isinstance(p, WriteError) for p in plans)
        results: list[dict[str, Any]] = []
        for plan in plans:
            if isinstance(plan, WriteError) or (all_or_none and failed):
                error = plan if isinstance(plan, WriteError) else ROLLED_BACK
                result: dict[str, Any] = {"success": False, "errors": [error.wire()]}
                if isinstance(plan, Plan) and plan.record_id:
                    result["id"] = plan.record_id
            else:
                record_id = self.store.apply(plan, CLIENT)
                result = {"id": record_id, "success": True, "errors": []}
                if upsert:
                    result["created"] = plan.op == "create"
            results.append(result)
        return Response.json(results)
