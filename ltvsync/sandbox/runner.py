"""Start the four emulators over one synthetic world and hand out settings that point at them.

``Sandbox`` is a context manager used by ``ltvsync sandbox serve``, ``ltvsync demo``, integration
tests and benchmarks.  Salesforce is served over TLS with a throwaway CA (simple-salesforce hard-codes
``https://``, API-REFERENCE §1.1); the others over plain http on 127.0.0.1.  The credentials are fixed
sandbox values, so printing them is harmless: they open nothing but these local emulators.
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ltvsync.config.settings import Settings
from ltvsync.sandbox.http import Emulator, Knobs
from ltvsync.sandbox.mixpanel import MixpanelEmulator
from ltvsync.sandbox.world import AIRTABLE_BASE, World, generate_world
from ltvsync.sandbox.zendesk import ZendeskEmulator


@dataclass(frozen=True)
class SandboxCredentials:
    salesforce_session_id: str = "sandbox-session"
    mixpanel_api_secret: str = "sandbox-secret"
    zendesk_email: str = "sandbox@example.com"
    zendesk_token: str = "sandbox-token"
    airtable_token: str = "sandbox-token"


class Sandbox:
    """All emulators over one world.  Salesforce/Airtable are optional so the sandbox degrades to
    the emulators that are importable (``salesforce``/``airtable`` stay None otherwise)."""

    def __init__(
        self,
        world: World | None = None,
        *,
        n_customers: int = 2000,
        seed: int = 0,
        knobs: Knobs | None = None,
        credentials: SandboxCredentials | None = None,
    ) -> None:
        self.world = world if world is not None else generate_world(n_customers, seed=seed)
        self.knobs = knobs or Knobs()
        self.credentials = credentials or SandboxCredentials()
        self.salesforce: Any = None
        self.airtable: Any = None
        self.mixpanel: MixpanelEmulator | None = None
        self.zendesk: ZendeskEmulator | None = None
        self.urls: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        w, c = self.world, self.credentials
        try:
            self.mixpanel = MixpanelEmulator(
                w.mixpanel_events, w.mixpanel_profiles, self.knobs, api_secret=c.mixpanel_api_secret
            )
            self.urls["mixpanel"] = self.mixpanel.start()
            self.zendesk = ZendeskEmulator(
                w.zendesk_users, w.zendesk_tickets, self.knobs, email=c.zendesk_email, token=c.zendesk_token
            )
            self.urls["zendesk"] = self.zendesk.start()
            sf_cls = _optional("ltvsync.sandbox.salesforce", "SalesforceEmulator")
            if sf_cls is not None:
                self.salesforce = sf_cls(w.salesforce, self.knobs, session_id=c.salesforce_session_id)
                self.urls["salesforce"] = self.salesforce.start_tls()
            at_cls = _optional("ltvsync.sandbox.airtable", "AirtableEmulator")
            if at_cls is not None:
                self.airtable = at_cls(w.airtable, self.knobs, token=c.airtable_token)
                self.urls["airtable"] = self.airtable.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Each server needs up to one poll interval (0.5 s) to notice shutdown; stop them together.
        threads = [threading.Thread(target=e.stop, name=f"stop-{e.name}") for e in self.emulators()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def emulators(self) -> list[Emulator]:
        found = [self.salesforce, self.mixpanel, self.zendesk, self.airtable]
        return [e for e in found if isinstance(e, Emulator)]

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what clients need -----------------------------------------------------------------------
    def describe(self) -> dict[str, dict[str, Any]]:
        """Per service: base URL and accepted credentials (plus the CA bundle for Salesforce)."""
        c = self.credentials
        out: dict[str, dict[str, Any]] = {}
        if "salesforce" in self.urls:
            out["salesforce"] = {
                "base_url": self.urls["salesforce"],
                "session_id": c.salesforce_session_id,
                "ca_bundle": getattr(self.salesforce, "ca_path", None),
            }
        if "mixpanel" in self.urls:
            out["mixpanel"] = {"base_url": self.urls["mixpanel"], "api_secret": c.mixpanel_api_secret}
        if "zendesk" in self.urls:
            out["zendesk"] = {
                "base_url": self.urls["zendesk"],
                "email": c.zendesk_email,
                "api_token": c.zendesk_token,
            }
        if "airtable" in self.urls:
            out["airtable"] = {
                "base_url": self.urls["airtable"],
                "api_key": c.airtable_token,
                "base_id": AIRTABLE_BASE,
            }
        return out

    def config_dict(self, store_url: str = "sqlite:///ltvsync-sandbox.db") -> dict[str, Any]:
        """The settings as plain TOML-able data: every running emulator enabled and pointed at."""
        c = self.credentials
        data: dict[str, Any] = {"store": {"url": store_url}}
        if "salesforce" in self.urls:
            data["salesforce"] = {
                "enabled": True,
                "instance_url": self.urls["salesforce"],
                "session_id": c.salesforce_session_id,
                "ca_bundle": getattr(self.salesforce, "ca_path", None),
                # The sandbox org has multi-currency on: each opportunity names its currency.
                "currency_field": "CurrencyIsoCode",
            }
        if "mixpanel" in self.urls:
            api = self.urls["mixpanel"] + "/api"
            # World events run up to as_of; start the export at the first day the world can hold.
            first_day = min(
                (e["properties"]["time"] for e in self.world.mixpanel_events[:1]),
                default=int(self.world.as_of.timestamp()),
            )
            data["mixpanel"] = {
                "enabled": True,
                "api_secret": c.mixpanel_api_secret,
                "export_url": api,
                "api_url": api,
                "start_date": _day(first_day),
            }
        if "zendesk" in self.urls:
            data["zendesk"] = {
                "enabled": True,
                "base_url": self.urls["zendesk"],
                "email": c.zendesk_email,
                "api_token": c.zendesk_token,
            }
        if "airtable" in self.urls:
            data["airtable"] = {
                "enabled": True,
                "api_key": c.airtable_token,
                "base_id": AIRTABLE_BASE,
                "endpoint_url": self.urls["airtable"],
            }
        return data

    def settings(self, store_url: str = "sqlite:///ltvsync-sandbox.db") -> Settings:
        return Settings.model_validate(self.config_dict(store_url))

    def write_config(self, path: str | Path, store_url: str = "sqlite:///ltvsync-sandbox.db") -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        header = "# Written by `ltvsync sandbox serve`: every source and destination points at the sandbox.\n"
        target.write_text(header + to_toml(self.config_dict(store_url)), encoding="utf-8")
        return target


def _optional(module: str, name: str) -> Any:
    """The class if its module exists (the other emulators are developed in parallel), else None."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for tables of scalars (tomllib only reads; no writer dependency needed)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue  # TOML has no null: leaving the key out means "use the default"
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
