"""Salesforce client boundary: login modes, Retry-After, request counting with a shared client."""

from __future__ import annotations

from typing import Any

import pytest
import responses
from pydantic import SecretStr
from responses import matchers

from ltvsync.connectors.base import PushItem
from ltvsync.connectors.salesforce import SalesforceSource
from ltvsync.connectors.salesforce_client import SalesforceClient
from ltvsync.connectors.salesforce_push import SalesforceDestination
from ltvsync.core.errors import AuthError, ConfigError, TransientError
from ltvsync.core.retry import RetryPolicy

from .test_salesforce_helpers import BASE, CONTACT_TYPES, contact_row, describe, make_settings, page, sf_id

SOAP_LOGIN = "https://login.salesforce.com/services/Soap/u/59.0"
PASSWORD = "hunter2-very-secret"
TOKEN = "TOKEN-very-secret"
LOGIN_OK = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">'
    "<soapenv:Body><loginResponse><result>"
    "<serverUrl>https://sf.example.test/services/Soap/u/59.0/00Dxx</serverUrl>"
    "<sessionId>00Dxx!FROM-LOGIN</sessionId>"
    "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
)
LOGIN_FAILED = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com">'
    "<soapenv:Body><soapenv:Fault><faultcode>INVALID_LOGIN</faultcode><detail><sf:LoginFault>"
    "<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>"
    "<sf:exceptionMessage>Invalid username, password, security token; or user locked out."
    "</sf:exceptionMessage>"
    "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
)


def password_settings() -> Any:
    return make_settings(
        session_id=None,
        instance_url="",
        username="ops@example.com",
        password=SecretStr(PASSWORD),
        security_token=SecretStr(TOKEN),
    )


@responses.activate(assert_all_requests_are_fired=True)
def test_password_login_then_queries_with_the_session_it_got() -> None:
    responses.post(SOAP_LOGIN, body=LOGIN_OK, content_type="text/xml")
    responses.get(
        f"{BASE}/sobjects/Contact/describe",
        json=describe("Contact", CONTACT_TYPES),
        match=[matchers.header_matcher({"Authorization": "Bearer 00Dxx!FROM-LOGIN"})],
    )
    client = SalesforceClient(password_settings(), retry=RetryPolicy.no_wait(2))
    assert "Email" in client.describe("Contact")
    login_body = responses.calls[0].request.body
    text = login_body.decode() if isinstance(login_body, bytes) else str(login_body)
    assert "<n1:username>ops@example.com</n1:username>" in text
    assert client.requests_made == 2


@responses.activate(assert_all_requests_are_fired=True)
def test_refused_login_is_an_auth_error_that_never_shows_the_password() -> None:
    responses.post(SOAP_LOGIN, body=LOGIN_FAILED, status=500, content_type="text/xml")
    client = SalesforceClient(password_settings(), retry=RetryPolicy.no_wait(2))
    with pytest.raises(AuthError, match="INVALID_LOGIN") as caught:
        client.describe("Contact")
    assert PASSWORD not in str(caught.value) and TOKEN not in str(caught.value)
    assert len(responses.calls) == 1  # a refused login is not retried


def test_missing_credentials_and_client_credentials_on_login_domain_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="session_id"):
        _ = SalesforceClient(make_settings(session_id=None)).sf
    with pytest.raises(ConfigError, match="My Domain"):
        settings = make_settings(session_id=None, consumer_key="key", consumer_secret=SecretStr("s"))
        _ = SalesforceClient(settings).sf
    with pytest.raises(ConfigError, match="instance_url"):
        _ = SalesforceClient(make_settings(instance_url="")).sf


@responses.activate(assert_all_requests_are_fired=True)
def test_retry_after_from_the_response_reaches_the_transient_error() -> None:
    responses.get(
        f"{BASE}/sobjects/Contact/describe",
        status=503,
        headers={"Retry-After": "7"},
        json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "maintenance"}],
    )
    client = SalesforceClient(make_settings(), retry=RetryPolicy.no_wait(max_attempts=1))
    with pytest.raises(TransientError) as caught:
        client.describe("Contact")
    assert caught.value.retry_after == 7.0


@responses.activate(assert_all_requests_are_fired=True)
def test_a_shared_client_counts_pulls_and_pushes_separately() -> None:
    client = SalesforceClient(make_settings(), retry=RetryPolicy.no_wait(2))
    src = SalesforceSource(client.settings, base_currency="USD", client=client)
    dest = SalesforceDestination(client.settings, client=client)
    responses.get(f"{BASE}/sobjects/Contact/describe", json=describe("Contact", CONTACT_TYPES))
    responses.get(f"{BASE}/queryAll/", json=page([contact_row(1)]))
    responses.patch(f"{BASE}/composite/sobjects", json=[{"id": sf_id(1), "success": True, "errors": []}])

    pulled = sum(p.api_calls for p in src.read("contacts", None))
    dest.write([PushItem(1, sf_id(1), {"ltv": 3.0})])

    assert (pulled, dest.api_calls(), client.requests_made) == (2, 1, 3)
