"""Bulk API 2.0 for the Salesforce emulator: ingest jobs (CSV in, per-row results out) and query jobs.

Matches what simple-salesforce 1.12.10 ``bulk2.py`` sends and checks (API-REFERENCE §1.6): create
answers ``state: Open`` with an ``id``; CSV upload answers exactly 201 with an empty body; the job is
processed when the client PATCHes ``UploadComplete``; results are CSV with ``sf__Id,sf__Created`` /
``sf__Id,sf__Error`` before the original columns; query results carry ``Sforce-NumberOfRecords`` and
``Sforce-Locator`` (``null`` on the last page).  Vendor docs: api_asynch create_job, upload_job_data,
close_job, get_job_info, get_job_successful_results, get_job_failed_results, query_get_job_results.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ltvsync.sandbox import soql
from ltvsync.sandbox.http import Request, Response
from ltvsync.sandbox.salesforce_schema import from_csv, sf_datetime, sf_error, to_csv
from ltvsync.sandbox.salesforce_store import CLIENT, Plan, WriteError

if TYPE_CHECKING:
    from ltvsync.sandbox.salesforce import SalesforceEmulator

API = r"/services/data/v(?P<ver>\d+\.\d+)/jobs"
INGEST_OPERATIONS = ("insert", "update", "upsert", "delete")
QUERY_OPERATIONS = ("query", "queryAll")
DEFAULT_MAX_RECORDS = 50_000  # rows per query-results page when the client gives no maxRecords
DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


@dataclass
class BulkJob:
    id: str
    operation: str
    obj: str
    created: str
    api_version: str
    state: str = "Open"
    external_id: str | None = None
    delimiter: str = ","
    query: str | None = None
    csv_parts: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    successes: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)  # query jobs: projected CSV rows
    error_message: str | None = None

    def info(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.obj,
            "createdById": "005SBX000000001AAA",
            "createdDate": self.created,
            "systemModstamp": self.created,
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "lineEnding": "LF",
            "columnDelimiter": next(k for k, v in DELIMITERS.items() if v == self.delimiter),
        }
        if self.query is None:
            body["contentUrl"] = f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches"
            body["numberRecordsProcessed"] = len(self.successes) + len(self.failures)
            body["numberRecordsFailed"] = len(self.failures)
        else:
            body["numberRecordsProcessed"] = len(self.rows)
        if self.external_id:
            body["externalIdFieldName"] = self.external_id
        if self.error_message:
            body["errorMessage"] = self.error_message
        return body


def _csv_text(header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


class BulkJobs:
    """Job table and route handlers; all handlers run under the emulator's lock (``api_route``)."""

    def __init__(self, emulator: SalesforceEmulator) -> None:
        self.emu = emulator
        self.jobs: dict[str, BulkJob] = {}
        self._ids = itertools.count(1)

    def _new_id(self) -> str:
        return f"750SBX{next(self._ids):09d}AAA"

    # -- ingest ----------------------------------------------------------------------------------
    def create_ingest(self, req: Request, ver: str) -> Response:
        body = req.json() if req.body else None
        if not isinstance(body, dict):
            return sf_error(400, "JSON_PARSER_ERROR", "expected a JSON object")
        operation = body.get("operation")
        obj = self.emu.store.object_name(str(body.get("object", "")))
        if operation not in INGEST_OPERATIONS:
            return sf_error(400, "INVALIDJOB", f"unsupported operation {operation!r}")
        if obj is None:
            return sf_error(400, "INVALIDJOB", f"sObject type '{body.get('object')}' is not supported.")
        ext = body.get("externalIdFieldName")
        if operation == "upsert":
            spec = self.emu.store.spec(obj, str(ext or ""))
            if spec is None or not (spec.name == "Id" or spec.external_id or spec.id_lookup):
                return sf_error(
                    400,
                    "INVALIDJOB",
                    f"Field name provided, {ext} is not an External ID or indexed field for {obj}",
                )
            ext = spec.name
        delimiter = DELIMITERS.get(str(body.get("columnDelimiter", "COMMA")), ",")
        job = BulkJob(
            self._new_id(),
            operation,
            obj,
            sf_datetime(self.emu.clock()),
            ver,
            external_id=ext,
            delimiter=delimiter,
        )
        self.jobs[job.id] = job
        return Response.json(job.info())

    def upload(self, req: Request, ver: str, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or job.query is not None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if job.state != "Open":
            return sf_error(
                409, "INVALIDJOBSTATE", f"Job is in state {job.state}; data can only be uploaded while Open"
            )
        job.csv_parts.append(req.body.decode("utf-8", "replace"))
        return Response(201, b"", {}, "text/plain")

    def set_state(self, req: Request, ver: str, job_id: str, kind: str) -> Response:
        job = self.jobs.get(job_id)
        body = req.json() if req.body else None
        if job is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = body.get("state") if isinstance(body, dict) else None
        if wanted == "Aborted" and job.state not in ("JobComplete", "Failed"):
            job.state = "Aborted"
        elif wanted == "UploadComplete" and kind == "ingest" and job.state == "Open":
            job.state = "UploadComplete"
            answer = job.info()
            self._process(job)  # processed at once; the next GET reports JobComplete
            return Response.json(answer)
        else:
            return sf_error(400, "INVALIDJOBSTATE", f"cannot move job from {job.state} to {wanted}")
        return Response.json(job.info())

    def _process(self, job: BulkJob) -> None:
        text = "".join(job.csv_parts)
        reader = csv.reader(io.StringIO(text), delimiter=job.delimiter)
        rows = [r for r in reader if r]
        if not rows:
            job.state, job.error_message = "Failed", "InvalidBatch : no rows to process"
            return
        header, data = rows[0], rows[1:]
        job.columns = header
        store = self.emu.store
        specs = [store.spec(job.obj, name) for name in header]
        unknown = [name for name, spec in zip(header, specs, strict=True) if spec is None]
        if unknown:
            job.state = "Failed"
            job.error_message = f"InvalidBatch : Field name not found : {unknown[0]}"
            return
        for row in data:
            self._ingest_row(job, header, specs, row)
        job.state = "JobComplete"

    def _ingest_row(self, job: BulkJob, header: list[str], specs: list[Any], row: list[str]) -> None:
        store = self.emu.store
        values: dict[str, Any] = {}
        for spec, raw in zip(specs, row, strict=False):
            if spec is None:
                continue
            present, value = from_csv(spec, raw)
            if present:
                values[spec.name] = value
        record_id = str(values.get("Id") or "")
        plan: Plan | WriteError
        if len(row) != len(header):
            plan = WriteError("INVALID_INPUT", f"row has {len(row)} columns, header has {len(header)}")
        elif job.operation == "insert":
            plan = store.plan_create(job.obj, values)
        elif job.operation == "update":
            plan = (
                store.plan_update(job.obj, record_id, values)
                if record_id
                else WriteError("MISSING_ARGUMENT", "Id not specified")
            )
        elif job.operation == "delete":
            plan = store.plan_delete(job.obj, record_id)
        else:
            spec = store.spec(job.obj, job.external_id or "Id")
            assert spec is not None
            plan = store.plan_upsert(job.obj, spec, values)
        if isinstance(plan, WriteError):
            job.failures.append(
                (
                    record_id,
                    f"{plan.status_code}:{plan.message}:{'--' if not plan.fields else ','.join(plan.fields)}",
                    row,
                )
            )
            return
        new_id = store.apply(plan, CLIENT)
        job.successes.append((new_id, plan.op == "create", row))

    def get_job(self, req: Request, ver: str, job_id: str, kind: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or (kind == "query") != (job.query is not None):
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        return Response.json(job.info())

    def results(self, req: Request, ver: str, job_id: str, which: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or job.query is not None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        if which == "successfulResults":
            rows = [[rid, "true" if created else "false", *row] for rid, created, row in job.successes]
            text = _csv_text(["sf__Id", "sf__Created", *job.columns], rows, job.delimiter)
        elif which == "failedResults":
            rows = [[rid, err, *row] for rid, err, row in job.failures]
            text = _csv_text(["sf__Id", "sf__Error", *job.columns], rows, job.delimiter)
        else:  # unprocessedrecords: everything is processed at UploadComplete
            text = _csv_text(job.columns, [], job.delimiter) if job.columns else ""
        return Response.text(text, content_type="text/csv")

    # -- query -----------------------------------------------------------------------------------
    def create_query(self, req: Request, ver: str) -> Response:
        body = req.json() if req.body else None
        if (
            not isinstance(body, dict)
            or body.get("operation") not in QUERY_OPERATIONS
            or not body.get("query")
        ):
            return sf_error(400, "INVALIDJOB", "query jobs need operation query|queryAll and a query")
        try:
            query, found = self.emu.run_soql(str(body["query"]), body["operation"] == "queryAll")
        except soql.SoqlError as exc:
            return sf_error(400, exc.code, exc.message)
        if query.count_only:
            return sf_error(400, "INVALIDJOB", "COUNT() is not supported by Bulk API 2.0 query")
        delimiter = DELIMITERS.get(str(body.get("columnDelimiter", "COMMA")), ",")
        job = BulkJob(
            self._new_id(),
            body["operation"],
            query.obj,
            sf_datetime(self.emu.clock()),
            ver,
            delimiter=delimiter,
        )
        job.query = str(body["query"])
        job.columns = list(query.fields)
        job.rows = [[to_csv(r.get(f)) for f in query.fields] for r in found]
        answer = job.info() | {"state": "UploadComplete"}
        job.state = "JobComplete"
        self.jobs[job.id] = job
        return Response.json(answer)

    def query_results(self, req: Request, ver: str, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None or job.query is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        locator = req.arg("locator") or ""
        try:
            start = int(locator) if locator else 0
            size = int(req.arg("maxRecords") or DEFAULT_MAX_RECORDS)
        except ValueError:
            return sf_error(400, "INVALID_LOCATOR", "locator and maxRecords must be integers")
        if size <= 0 or start < 0:
            return sf_error(400, "INVALID_LOCATOR", "maxRecords must be positive")
        page = job.rows[start : start + size]
        end = start + len(page)
        resp = Response.text(_csv_text(job.columns, page, job.delimiter), content_type="text/csv")
        resp.headers["Sforce-NumberOfRecords"] = str(len(page))
        resp.headers["Sforce-Locator"] = str(end) if end < len(job.rows) else "null"
        return resp


def register_bulk_routes(emu: SalesforceEmulator) -> BulkJobs:
    """Attach the Bulk 2.0 routes to ``emu`` (behind its auth and budget); returns the job table."""
    jobs = BulkJobs(emu)
    emu.bulk = jobs
    job = r"/(?P<job_id>\w+)"
    emu.api_route("POST", API + r"/ingest/?", "bulk_ingest_create", jobs.create_ingest)
    emu.api_route("PUT", API + r"/ingest" + job + r"/batches/?", "bulk_ingest_upload", jobs.upload)
    emu.api_route(
        "PATCH",
        API + r"/ingest" + job + r"/?",
        "bulk_ingest_state",
        lambda r, ver, job_id: jobs.set_state(r, ver, job_id, "ingest"),
    )
    emu.api_route(
        "GET",
        API + r"/ingest" + job + r"/?",
        "bulk_ingest_get",
        lambda r, ver, job_id: jobs.get_job(r, ver, job_id, "ingest"),
    )
    emu.api_route(
        "GET",
        API
        + r"/ingest"
        + job
        + r"/(?P<which>successfulResults|failedResults|unprocessedrecords|unprocessedRecords)/?",
        "bulk_ingest_results",
        jobs.results,
    )
    emu.api_route("POST", API + r"/query/?", "bulk_query_create", jobs.create_query)
    emu.api_route(
        "GET",
        API + r"/query" + job + r"/?",
        "bulk_query_get",
        lambda r, ver, job_id: jobs.get_job(r, ver, job_id, "query"),
    )
    emu.api_route(
        "PATCH",
        API + r"/query" + job + r"/?",
        "bulk_query_state",
        lambda r, ver, job_id: jobs.set_state(r, ver, job_id, "query"),
    )
    emu.api_route("GET", API + r"/query" + job + r"/results/?", "bulk_query_results", jobs.query_results)
    return jobs
