"""Side doors of the Salesforce emulator: test/demo admin routes and the OAuth token endpoint.

Admin routes (names start with ``admin``, so the base exempts them from faults; they skip auth and
the API budget) let a test or a separately running ``sandbox serve`` edit the org as "someone else"
(recorded as such in ``last_writer``, never in ``writes``).  The token endpoint answers the
username-password and client-credentials grants the way Salesforce's ``/services/oauth2/token`` does
(API-REFERENCE §1.1: ``access_token`` + ``instance_url``), pointing clients back at the emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from ltvsync.sandbox.http import Request, Response
from ltvsync.sandbox.salesforce_schema import json_object, sf_error

if TYPE_CHECKING:
    from ltvsync.sandbox.salesforce import SalesforceEmulator

GRANTS = ("password", "client_credentials")
NO_CONTENT = 204


def register_admin_routes(emu: SalesforceEmulator) -> None:
    def target(obj: str, rid: str | None) -> str | Response:
        name = emu.store.object_name(obj)
        if name is None or (rid is not None and rid not in emu.store.objects[name]):
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        return name

    def add(req: Request, obj: str) -> Response:
        name, body = target(obj, None), json_object(req)
        if isinstance(name, Response):
            return name
        if body is None:
            return sf_error(400, "JSON_PARSER_ERROR", "request body must be a JSON object")
        return Response.json({"id": emu.add(name, body)}, 201)

    def modify(req: Request, obj: str, rid: str) -> Response:
        name, body = target(obj, rid), json_object(req)
        if isinstance(name, Response):
            return name
        if body is None:
            return sf_error(400, "JSON_PARSER_ERROR", "request body must be a JSON object")
        emu.modify(name, rid, body)
        return Response(NO_CONTENT, b"", {}, None)

    def delete(req: Request, obj: str, rid: str) -> Response:
        name = target(obj, rid)
        if isinstance(name, Response):
            return name
        emu.delete(name, rid)
        return Response(NO_CONTENT, b"", {}, None)

    def writes(req: Request) -> Response:
        with emu._lock:
            return Response.json([{"object": o, "id": i, "fields": f} for o, i, f in emu.store.writes])

    def token(req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") not in GRANTS:
            return Response.json(
                {"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400
            )
        return Response.json(
            {
                "access_token": emu.session_id,
                "instance_url": emu.base_url,
                "id": f"{emu.base_url}/id/00DSBX000000001AAA/005SBX000000001AAA",
                "token_type": "Bearer",
                "issued_at": str(int(emu.clock().timestamp() * 1000)),
                "signature": "sandbox",
            }
        )

    emu.route("POST", r"/services/oauth2/token", "oauth_token", token)
    emu.route("POST", r"/admin/sobjects/(?P<obj>\w+)", "admin_add", add)
    emu.route("PATCH", r"/admin/sobjects/(?P<obj>\w+)/(?P<rid>\w+)", "admin_modify", modify)
    emu.route("DELETE", r"/admin/sobjects/(?P<obj>\w+)/(?P<rid>\w+)", "admin_delete", delete)
    emu.route("GET", r"/admin/writes", "admin_writes", writes)
