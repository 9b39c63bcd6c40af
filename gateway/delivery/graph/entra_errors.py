"""
What an Entra token error means and what an admin does about it.

A token failure is reported in three places (the tenant state on ``/healthz`` and
``/metrics``, the log line when the state changes, ``graphsmtp-config check --online``); all of
them explain it with L{explain}, so an AADSTS code reads the same everywhere: the code once,
Entra's own sentence, and the action — never the credential itself.

Codes are Entra's (https://learn.microsoft.com/entra/identity-platform/reference-error-codes); ``authority``, ``credential``, ``tls``, ``network``,
``http_NNN`` and ``not_json`` are the gateway's own codes for failures that happen before
Entra could answer with one (L{gateway.delivery.graph.token.classify_exception}).
"""

from __future__ import annotations

from typing import Optional

import attrs

#: code → (what is wrong, what the admin does).  Keep each a plain sentence without a final stop.
_EXPLANATIONS: dict[str, tuple[str, str]] = {
    "AADSTS90002": ("tenant not found",
                    "check graph.tenant_id (Entra admin center > Overview > Tenant ID) and that graph.authority "
                    "is the login host of the tenant's cloud"),
    "authority": ("tenant not found (tenant discovery failed)",
                  "check graph.tenant_id (Entra admin center > Overview > Tenant ID) and that graph.authority "
                  "is the login host of the tenant's cloud"),
    "AADSTS90023": ("bad authority request",
                    "check graph.authority and graph.tenant_id"),
    "AADSTS7000215": ("bad client secret",
                      "put the secret's Value (not its Secret ID) from App registrations > Certificates & secrets "
                      "into graph.client_secret"),
    "AADSTS7000222": ("client secret expired",
                      "create a new client secret under App registrations > Certificates & secrets and update "
                      "graph.client_secret"),
    "AADSTS7000216": ("no credential sent",
                      "configure graph.client_secret, graph.certificate or graph.client_assertion_file"),
    "AADSTS700016": ("application not found in the tenant",
                     "check graph.client_id (the Application (client) ID) and that the app is registered in, or "
                     "consented to by, this tenant"),
    "AADSTS700027": ("certificate not accepted (unknown, wrong or expired certificate)",
                     "upload the certificate (public key) under App registrations > Certificates & secrets, check "
                     "graph.certificate's thumbprint and renew an expired certificate"),
    "AADSTS700024": ("client assertion outside its valid time",
                     "check the clock of this machine (NTP)"),
    "AADSTS700023": ("client assertion has the wrong audience",
                     "check graph.authority"),
    "AADSTS700211": ("no matching federated identity credential (issuer)",
                     "add a federated credential for this issuer under App registrations > Certificates & secrets"),
    "AADSTS700213": ("no matching federated identity credential (subject)",
                     "add a federated credential for this subject under App registrations > Certificates & secrets"),
    "AADSTS65001": ("admin consent missing",
                    "grant admin consent for the Mail.Send application permission under App registrations > "
                    "API permissions"),
    "AADSTS500011": ("Microsoft Graph not found in the tenant",
                     "check graph.graph_url matches the tenant's cloud"),
    "AADSTS7000112": ("application disabled", "enable the app's service principal in Enterprise applications"),
    "AADSTS70011": ("invalid scope", "check graph.graph_url (the scope is <graph_url>/.default)"),
    "credential": ("the configured credential cannot be used",
                   "check the private key / certificate files named in graph.certificate (format, passphrase)"),
    "tls": ("TLS verification of the login host failed",
            "check graph.ca_bundle and any TLS-inspecting proxy"),
    "network": ("token endpoint unreachable", "check DNS, firewall and graph.https_proxy; mail stays queued"),
    "not_json": ("token endpoint answered something that is not JSON (proxy or outage page)",
                 "check graph.https_proxy; mail stays queued"),
}

#: Graph's answer when the token lacks the permission (a 403 on sendMail, not an AADSTS code).
MAIL_SEND_MISSING = ("the token carries no Mail.Send application permission (admin consent missing)",
                     "add Microsoft Graph > Application permissions > Mail.Send under App registrations > API "
                     "permissions and grant admin consent")


@attrs.frozen
class Explanation:
    """``problem`` names the trouble; ``action`` tells the admin what to change; ``code`` is as reported."""

    code: str
    problem: str
    action: str
    detail: str = ""

    def summary(self) -> str:
        """
        What is wrong, in one line: ``AADSTS7000215 bad client secret (Entra: Invalid client
        secret provided)`` or ``token endpoint unreachable (HTTP 503)``.  Entra's code is shown
        once; the gateway's own codes (``http_503``, ``network``) are not shown at all.
        """
        text = f"{self.code} {self.problem}" if self.code.startswith("AADSTS") else self.problem
        if self.detail and not self.code.startswith("http_") and self.detail.lower() != self.problem.lower():
            text += f" (Entra: {self.detail})" if self.code.startswith("AADSTS") else f" ({self.detail})"
        return text

    def line(self) -> str:
        """Summary and action: ``AADSTS7000215 bad client secret (…); put the secret's Value …``."""
        return f"{self.summary()}; {self.action}" if self.action else self.summary()


def explain(code: str, detail: str = "", transient: Optional[bool] = None) -> Explanation:
    """
    The explanation for a token error ``code`` with Entra's (cleaned) ``detail``.  HTTP status
    codes of the login host and unknown transient codes read as an unreachable endpoint.
    """
    known = _EXPLANATIONS.get(code)
    if known is not None:
        return Explanation(code, known[0], known[1], detail)
    if code.startswith("http_"):
        status = code[5:]
        if status.isdigit() and (int(status) >= 500 or int(status) in (408, 429)):
            return Explanation(code, f"token endpoint unreachable (HTTP {status})",
                               "Entra or the network path to it is failing; mail stays queued and is retried", detail)
        return Explanation(code, f"token endpoint refused the request (HTTP {status})",
                           "check graph.authority, graph.https_proxy and graph.ca_bundle", detail)
    if transient:
        return Explanation(code, "token endpoint unreachable", "mail stays queued and is retried", detail)
    return Explanation(code, detail or "token request refused",
                       "check the app registration and the [graph] credentials", "")


__all__ = ["Explanation", "explain", "MAIL_SEND_MISSING"]
