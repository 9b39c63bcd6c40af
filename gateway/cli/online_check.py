"""
``graphsmtp-config check --online``: does the configured app registration really get a Graph
token, and may it send mail?

It asks Entra for a token exactly as the daemon would (same MSAL settings, CA bundle, proxy
and timeout; L{TokenProviders.acquire_blocking}, in this process's own thread: a command-line
tool has no reactor to protect), then reads the token's ``roles`` claim for the ``Mail.Send``
application permission (``Mail.ReadWrite`` too when the configuration needs drafts).  Failures
are explained with the AADSTS code and the admin's action (L{gateway.delivery.graph.entra_errors}).
Nothing secret is printed: only codes, Entra's first sentence, thumbprints and dates.

Exit status (sysexits): 0 the tenant works, 78 (EX_CONFIG) an admin must change the
configuration or the app registration, 75 (EX_TEMPFAIL) the token endpoint could not be reached.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from typing import Callable, Optional, TextIO

from gateway.cli.sysexits import EX_CONFIG, EX_OK, EX_TEMPFAIL
from gateway.config import GatewayConfig
from gateway.config.graph import CertificateConfig, GraphConfig
from gateway.delivery.graph.credentials import TenantCredentials, credentials_from_config
from gateway.delivery.graph.entra_errors import MAIL_SEND_MISSING, Explanation, explain
from gateway.delivery.graph.token import (
    AccessToken,
    TokenError,
    TokenProviders,
    classify_result,
    msal_http_session,
)


def check_online(config: GatewayConfig, out: TextIO, now: Callable[[], float] = time.time) -> int:
    """Probe the configured tenant; write one block of lines to ``out``; return the exit status."""
    if config.deliverer != "graph":
        out.write("  online check   skipped: no [graph] credentials (capture delivery sends nothing)\n")
        return EX_OK
    graph: GraphConfig = config.graph
    credentials = credentials_from_config(graph)
    status = _check_certificate(graph.certificate, out, now)
    try:
        token = _token(graph, credentials, now)
    except TokenError as e:
        _failed(out, credentials.label, explain(e.code, e.description, transient=not e.is_config))
        return EX_CONFIG if e.is_config else EX_TEMPFAIL
    return _check_permissions(graph, credentials.label, token, out, now) or status


def _check_certificate(certificate: Optional[CertificateConfig], out: TextIO, now: Callable[[], float]) -> int:
    """An expired certificate is an admin's job (EX_CONFIG), even if Entra still issues a token."""
    expiry = _certificate_expiry(certificate.certificate_pem) if certificate is not None else None
    if certificate is None or expiry is None:
        return EX_OK
    if expiry < now():
        out.write(f"  certificate    EXPIRED on {_date(expiry)} (thumbprint {certificate.thumbprint}); "
                  "create a new certificate, upload it under App registrations > Certificates & secrets "
                  "and update graph.certificate\n")
        return EX_CONFIG
    out.write(f"  certificate    thumbprint {certificate.thumbprint}, valid until {_date(expiry)}\n")
    return EX_OK


def _token(graph: GraphConfig, credentials: TenantCredentials, now: Callable[[], float]) -> AccessToken:
    """A token as the daemon would get it; a failed tenant discovery is asked again for Entra's reason."""
    proxies = {"https": graph.https_proxy} if graph.https_proxy else None
    tokens = TokenProviders(None, None, verify=graph.verify, proxies=proxies, timeout=graph.token_timeout)
    try:
        return tokens.acquire_blocking(credentials, now)
    except TokenError as e:
        if e.code == "authority":
            raise (_discovery_error(graph, proxies) or e) from None
        raise
    finally:
        tokens.close()


def _check_permissions(graph: GraphConfig, label: str, token: AccessToken, out: TextIO,
                       now: Callable[[], float]) -> int:
    """Mail.Send must be granted; Mail.ReadWrite too when the configuration needs drafts (else a warning)."""
    minutes = max(0, int((token.expires_at - now()) // 60))
    roles = token_roles(token.reveal())
    if roles is None:
        out.write(f"  tenant {label:<7} ok: token issued (expires in {minutes} min); the token does not "
                  "show its permissions, Mail.Send not checked\n")
        return EX_OK
    if "Mail.Send" not in roles:
        _failed(out, label, Explanation("consent", MAIL_SEND_MISSING[0], MAIL_SEND_MISSING[1]))
        return EX_CONFIG
    granted = ", ".join(sorted(r for r in roles if r.startswith("Mail.")))
    out.write(f"  tenant {label:<7} ok: token issued (expires in {minutes} min), permissions {granted}\n")
    if (graph.large_messages or graph.hidden_recipients == "draft") and "Mail.ReadWrite" not in roles:
        reason = "graph.hidden_recipients = \"draft\"" if graph.hidden_recipients == "draft" else "graph.large_messages"
        out.write(f"  warning        no Mail.ReadWrite permission: messages that need a draft ({reason}) will "
                  "fail; grant it (admin consent) or turn that setting off\n")
    return EX_OK


def token_roles(token: str) -> Optional[list[str]]:
    """The ``roles`` claim of a JWT access token (not verified: only read), or None if unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    roles = payload.get("roles", []) if isinstance(payload, dict) else None
    return [str(r) for r in roles] if isinstance(roles, list) else None


def _failed(out: TextIO, label: str, explanation: Explanation) -> None:
    out.write(f"  tenant {label:<7} FAILED: {explanation.summary()}\n")
    out.write(f"    action: {explanation.action}\n")


def _discovery_error(graph: GraphConfig, proxies: Optional[dict[str, str]]) -> Optional[TokenError]:
    """
    MSAL reports a failed tenant discovery without Entra's answer; ask once more ourselves so
    the admin sees the AADSTS code (90002: tenant not found).
    """
    session = msal_http_session(graph.verify, proxies, graph.token_timeout)
    try:
        response = session.get(graph.authority.rstrip("/") + "/v2.0/.well-known/openid-configuration")
        body = response.json()
    except Exception:  # noqa: BLE001 - fall back to MSAL's own classification
        return None
    finally:
        session.close()
    if isinstance(body, dict) and body.get("error"):
        return classify_result(body)
    return None


def _certificate_expiry(pem: str) -> Optional[float]:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii")).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def _date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["check_online", "token_roles"]
