"""A throwaway certificate authority and a server certificate for ``127.0.0.1``.

simple-salesforce hard-codes ``https://`` for every REST call (API-REFERENCE §1.1), so the Salesforce
emulator must speak TLS.  ``trustme`` mints a CA and a leaf certificate in memory; the CA PEM is written
to a temporary directory so a client session can trust it with ``session.verify = ca_path`` (with
``session.trust_env = False``, otherwise ``REQUESTS_CA_BUNDLE`` wins).
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class SandboxTLS:
    """A server-side SSL context plus the path of the CA certificate clients must trust."""

    context: ssl.SSLContext
    ca_path: str


def make_tls(directory: str | Path | None = None) -> SandboxTLS:
    """Mint a CA and a ``127.0.0.1``/``localhost`` server certificate; write the CA PEM to ``directory``.

    A fresh temporary directory is used when none is given; it lives as long as the process (the
    PEM is tiny and clients need it for the emulator's whole life).
    """
    ca = trustme.CA()
    server_cert = ca.issue_cert(*LOOPBACK_HOSTS)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    target = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="ltvsync-tls-"))
    target.mkdir(parents=True, exist_ok=True)
    ca_file = target / "sandbox-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return SandboxTLS(context=context, ca_path=str(ca_file))
