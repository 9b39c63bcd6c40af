"""
The ``[graph]`` section: which tenant and app registration to deliver through, how to reach it,
and how politely to use it.

Parsed and validated once at start-up (a bad value stops the gateway with one line naming the
key).  The certificate is read and checked against its private key here, so a wrong key file is
a start-up error, not a midnight token failure.  Secrets (client secret, certificate key and
passphrase) may be inline, in a ``*_file`` or in a ``*_env`` variable and are kept as
L{Secret}s so no repr can show them.

Keys (defaults in brackets)::

    tenant_id, client_id            required
    client_secret[_file|_env]       one credential: a client secret,
    certificate + certificate_key[_file|_env] (+ certificate_passphrase[_file|_env], send_x5c [false])
                                    or a certificate (PEM; thumbprint computed; x5c for SNI auth),
    client_assertion_file           or a federated token file, re-read for every token request
    cloud ["global"]                "global" | "usgov" (GCC High) | "usgovdod" | "china"
    authority, graph_url            override the cloud's login host / Graph root (https only)
    ca_bundle                       PEM bundle to verify Graph and the login host (proxies, tests)
    https_proxy                     http://host:port of a proxy; Graph and Entra go through CONNECT
                                    tunnels (TLS stays end to end)
    send_as ["header-from"]         "header-from" | "envelope-from" | a fixed mailbox address
    hidden_recipients ["bcc-header"]  "bcc-header" (Mail.Send) | "draft" (Mail.ReadWrite); see
                                    gateway.delivery.graph.mime for the disclosure trade-off
    save_to_sent_items [true]       only JSON sends can skip Sent Items; MIME sends always keep a copy
    large_messages [true]           draft + upload sessions above one request (Mail.ReadWrite);
                                    false caps the SMTP SIZE to what one request carries
    max_request_size ["4MB"], upload_chunk_size [3200KiB: a multiple of 320KiB, at most 3840KiB], max_message_size ["35MB"]
    mailbox_concurrency [2, max 4], mailbox_rate [30/min], mailbox_burst [1], max_hold ["2s"]
    connect_timeout ["10s"], request_timeout ["60s"], token_timeout ["30s"]
    token_threads [1], io_threads [2], tenant_backoff ["60s"], tenant_backoff_max ["1h"]
    postmaster, dsn [false]         RFC 3464 failure notices from this mailbox to the sender
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader
from gateway.config.secrets import Secret, secret_from_table
from gateway.mail.addresses import canonical

#: Login host and Graph root per national cloud (https://learn.microsoft.com/graph/deployments).
CLOUDS: Mapping[str, tuple[str, str]] = {
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    "usgovdod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}

SEND_AS_MODES = ("header-from", "envelope-from")
HIDDEN_RECIPIENT_MODES = ("bcc-header", "draft")

#: What one Graph request may carry: about 4 MB, counted on the base64 body.  Not in the API
#: reference; stated by Microsoft staff (https://learn.microsoft.com/answers/questions/1824204).
DEFAULT_MAX_REQUEST_SIZE = 4_000_000
#: Upload-session chunks: 10 × 320 KiB, under the 4 MB per PUT and OneDrive's multiple rule.
DEFAULT_UPLOAD_CHUNK_SIZE = 10 * 320 * 1024
#: Upload PUTs are whole multiples of 320 KiB (the rule of OneDrive-style sessions,
#: https://learn.microsoft.com/graph/api/driveitem-createuploadsession, harmless for Outlook
#: ones) and at most 4 MiB (https://learn.microsoft.com/graph/outlook-large-attachments):
#: 12 x 320 KiB is the largest.
UPLOAD_CHUNK_UNIT = 320 * 1024
MAX_UPLOAD_CHUNK = 12 * UPLOAD_CHUNK_UNIT
#: Exchange Online's default maximum send size; admins may raise it to 150 MB
#: (https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits).
DEFAULT_MAX_MESSAGE_SIZE = 35_000_000


@attrs.frozen
class CertificateConfig:
    """
    A certificate credential.  ``thumbprint`` is the SHA-1 hex digest of the DER certificate
    (what Entra shows and what MSAL puts in the assertion's ``x5t``); ``send_x5c`` also sends
    the certificate itself, for subject-name/issuer authentication.
    """

    certificate_pem: str = attrs.field(repr=False)
    private_key: Secret
    thumbprint: str
    passphrase: Optional[Secret] = None
    send_x5c: bool = False
    path: str = ""


@attrs.frozen
class GraphConfig:
    """
    Everything the Graph deliverer needs.  Exactly one of ``client_secret``, ``certificate``
    and ``client_assertion_file`` is set.  ``authority`` is the full authority URL (login host
    plus tenant) and ``graph_url`` the Graph root without version, both derived from ``cloud``
    unless given explicitly.
    """

    tenant_id: str
    client_id: str
    authority: str
    graph_url: str
    cloud: str = "global"
    client_secret: Optional[Secret] = None
    certificate: Optional[CertificateConfig] = None
    client_assertion_file: Optional[str] = None
    verify: Optional[str] = None
    https_proxy: Optional[str] = None
    send_as: str = "header-from"
    save_to_sent_items: bool = True
    hidden_recipients: str = "bcc-header"
    large_messages: bool = True
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    upload_chunk_size: int = DEFAULT_UPLOAD_CHUNK_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    mailbox_concurrency: int = 2
    mailbox_rate: float = 30.0
    mailbox_burst: int = 1
    #: No longer used: admission waits in the queue runner's per-mailbox queues (kept so that
    #: existing configuration files still load).
    max_hold: float = 2.0
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    token_timeout: float = 30.0
    token_threads: int = 1
    io_threads: int = 2
    tenant_backoff: float = 60.0
    tenant_backoff_max: float = 3600.0
    postmaster: Optional[str] = None
    dsn: bool = False

    @property
    def scope(self) -> str:
        return self.graph_url.rstrip("/") + "/.default"


def parse_graph_section(
    reader: TableReader,
    environ: Mapping[str, str] = os.environ,
    resolve: Callable[[str], str] = os.path.abspath,
) -> GraphConfig:
    """
    Validate the ``[graph]`` table into a L{GraphConfig}.  Keys are checked in the order of the
    module docstring, so a table with several mistakes always names the same one first.
    """
    tenant_id = _required(reader, "tenant_id")
    client_id = _required(reader, "client_id")
    cloud = _choice(reader, "cloud", "global", tuple(CLOUDS))
    authority, graph_url = _endpoints(reader, cloud, tenant_id)
    client_secret, certificate, assertion = _credential(reader, environ, resolve)
    verify = _ca_bundle(reader, resolve)
    https_proxy = _https_proxy(reader)
    send_as = _send_as(reader)
    postmaster, dsn = _failure_notices(reader)
    max_request_size, upload_chunk_size, max_message_size = _sizes(reader)
    rate = reader.number("mailbox_rate", 30.0)
    if rate <= 0:
        raise ConfigError(reader.key("mailbox_rate"), "must be more than 0 messages per minute")

    config = GraphConfig(
        tenant_id=tenant_id,
        client_id=client_id,
        authority=authority,
        graph_url=graph_url,
        cloud=cloud,
        client_secret=client_secret,
        certificate=certificate,
        client_assertion_file=assertion,
        verify=verify,
        https_proxy=https_proxy,
        send_as=send_as,
        save_to_sent_items=reader.boolean("save_to_sent_items", True),
        hidden_recipients=_choice(reader, "hidden_recipients", "bcc-header", HIDDEN_RECIPIENT_MODES),
        large_messages=reader.boolean("large_messages", True),
        max_request_size=max_request_size,
        upload_chunk_size=upload_chunk_size,
        max_message_size=max_message_size,
        mailbox_concurrency=reader.integer("mailbox_concurrency", 2, 1, 4),
        mailbox_rate=rate,
        mailbox_burst=reader.integer("mailbox_burst", 1, 1, 30),
        max_hold=reader.duration("max_hold", 2.0),
        connect_timeout=_positive(reader, "connect_timeout", 10.0),
        request_timeout=_positive(reader, "request_timeout", 60.0),
        token_timeout=_positive(reader, "token_timeout", 30.0),
        token_threads=reader.integer("token_threads", 1, 1, 2),
        io_threads=reader.integer("io_threads", 2, 1, 8),
        tenant_backoff=_positive(reader, "tenant_backoff", 60.0),
        tenant_backoff_max=_positive(reader, "tenant_backoff_max", 3600.0),
        postmaster=postmaster,
        dsn=dsn,
    )
    reader.finish()
    return config


def _choice(reader: TableReader, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = reader.string(name, default, choices)
    assert value is not None  # there is a default
    return value


def _endpoints(reader: TableReader, cloud: str, tenant_id: str) -> tuple[str, str]:
    """The authority (login host plus tenant) and the Graph root: the cloud's, unless overridden."""
    login_host, graph_root = CLOUDS[cloud]
    authority = reader.string("authority")
    authority = _authority(authority, tenant_id, reader.key("authority")) if authority else f"{login_host}/{tenant_id}"
    graph_url = reader.string("graph_url")
    graph_url = _https_url(graph_url, reader.key("graph_url")) if graph_url else graph_root
    return authority, graph_url


def _credential(
    reader: TableReader, environ: Mapping[str, str], resolve: Callable[[str], str],
) -> tuple[Optional[Secret], Optional[CertificateConfig], Optional[str]]:
    """The one credential given: a client secret, a certificate, or a federated token file."""
    client_secret = secret_from_table(reader.table, "client_secret", reader.where, environ, resolve)
    reader.mark_used("client_secret", "client_secret_file", "client_secret_env")
    certificate = _certificate(reader, environ, resolve)
    assertion = reader.string("client_assertion_file")
    if assertion:
        assertion = resolve(assertion)
    given = [n for n, v in (("client_secret", client_secret), ("certificate", certificate),
                            ("client_assertion_file", assertion)) if v]
    if not given:
        raise ConfigError(reader.key("client_secret"),
                          "set one credential: client_secret (or _file/_env), certificate + certificate_key, "
                          "or client_assertion_file")
    if len(given) > 1:
        raise ConfigError(reader.key(given[1]), f"set only one credential, not both {given[0]} and {given[1]}")
    return client_secret, certificate, assertion


def _ca_bundle(reader: TableReader, resolve: Callable[[str], str]) -> Optional[str]:
    verify = reader.string("ca_bundle")
    if not verify:
        return verify
    verify = resolve(verify)
    if not os.path.isfile(verify):
        raise ConfigError(reader.key("ca_bundle"), f"file {verify} does not exist")
    _check_pem_bundle(verify, reader.key("ca_bundle"))
    return verify


def _https_proxy(reader: TableReader) -> Optional[str]:
    https_proxy = reader.string("https_proxy")
    if not https_proxy:
        return None
    parts = urlsplit(https_proxy)
    if parts.username is not None or parts.password is not None:
        # Never echo the URL: it holds a password.  The CONNECT tunnel does not send
        # credentials, so accepting them would only mean endless 407 answers.
        raise ConfigError(reader.key("https_proxy"),
                          "must not contain credentials (user:password@): proxy authentication is not supported")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(reader.key("https_proxy"),
                          f"must be http://host:port of a proxy that allows CONNECT, not {https_proxy!r}")
    return https_proxy


def _send_as(reader: TableReader) -> str:
    send_as = reader.string("send_as", "header-from")
    assert send_as is not None  # there is a default
    if send_as not in SEND_AS_MODES and not _looks_like_mailbox(send_as):
        raise ConfigError(reader.key("send_as"),
                          f"must be \"header-from\", \"envelope-from\" or a mailbox address, not {send_as!r}")
    return send_as


def _failure_notices(reader: TableReader) -> tuple[Optional[str], bool]:
    """``postmaster`` and ``dsn``: RFC 3464 notices need a mailbox to come from."""
    postmaster = reader.string("postmaster")
    if postmaster is not None and not _looks_like_mailbox(postmaster):
        raise ConfigError(reader.key("postmaster"), f"must be a mailbox address, not {postmaster!r}")
    dsn = reader.boolean("dsn", False)
    if dsn and not postmaster:
        raise ConfigError(reader.key("dsn"), "needs graph.postmaster: the mailbox notifications are sent from")
    return postmaster, dsn


def _sizes(reader: TableReader) -> tuple[int, int, int]:
    """``max_request_size``, ``upload_chunk_size`` and ``max_message_size``, within what Graph takes."""
    max_request_size = reader.size("max_request_size", DEFAULT_MAX_REQUEST_SIZE)
    if not 64 * 1024 <= max_request_size <= 150 * 1000 * 1000:
        raise ConfigError(reader.key("max_request_size"), "must be from 64KiB to 150MB")
    upload_chunk_size = reader.size("upload_chunk_size", DEFAULT_UPLOAD_CHUNK_SIZE)
    if not (UPLOAD_CHUNK_UNIT <= upload_chunk_size <= MAX_UPLOAD_CHUNK and upload_chunk_size % UPLOAD_CHUNK_UNIT == 0):
        raise ConfigError(reader.key("upload_chunk_size"),
                          f"must be a multiple of 320KiB ({UPLOAD_CHUNK_UNIT} bytes) from 320KiB to 3840KiB "
                          f"(Graph takes at most 4MiB per upload PUT), not {upload_chunk_size} bytes; "
                          "for example \"3200KiB\"")
    max_message_size = reader.size("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
    if not 1024 <= max_message_size <= 150 * 1000 * 1000:
        raise ConfigError(reader.key("max_message_size"), "must be from 1KiB to 150MB (Exchange Online's ceiling)")
    return max_request_size, upload_chunk_size, max_message_size


def _check_pem_bundle(path: str, key: str) -> None:
    """A CA bundle must hold at least one PEM certificate (not a key, not DER, not empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(key, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")


def _required(reader: TableReader, name: str) -> str:
    value = reader.string(name)
    if not value or not value.strip():
        raise ConfigError(reader.key(name), "is required")
    return value.strip()


def _positive(reader: TableReader, name: str, default: float) -> float:
    value = reader.duration(name, default)
    if value <= 0:
        raise ConfigError(reader.key(name), "must be more than 0 seconds")
    return value


def _https_url(value: str, key: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(key, f"must be an https:// URL (TLS is always verified), not {value!r}")
    return value.rstrip("/")


def _authority(value: str, tenant_id: str, key: str) -> str:
    """An explicit authority: a login host (the tenant is appended) or host plus tenant path."""
    value = _https_url(value, key)
    if not urlsplit(value).path.strip("/"):
        value = f"{value}/{tenant_id}"
    return value


def _looks_like_mailbox(value: str) -> bool:
    """One bare address by the gateway's mail grammar (L{gateway.mail})."""
    if "<" in value or ">" in value or value != value.strip():
        return False
    return canonical(value) is not None


def _certificate(reader: TableReader, environ: Mapping[str, str], resolve: Callable[[str], str]) -> Optional[CertificateConfig]:
    cert_path = reader.string("certificate")
    key = secret_from_table(reader.table, "certificate_key", reader.where, environ, resolve)
    passphrase = secret_from_table(reader.table, "certificate_passphrase", reader.where, environ, resolve)
    reader.mark_used(*(f"{n}{s}" for n in ("certificate_key", "certificate_passphrase") for s in ("", "_file", "_env")))
    send_x5c = reader.boolean("send_x5c", False)
    if not cert_path:
        if key is not None:
            raise ConfigError(reader.key("certificate"), "is required with certificate_key (the PEM certificate file)")
        return None
    if key is None:
        raise ConfigError(reader.key("certificate_key"), "is required with certificate (the PEM private key)")
    path = resolve(cert_path)
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(reader.key("certificate"), f"cannot read {path}: {e.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(reader.key("certificate"), f"{path} is not a PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(
            key.reveal().encode("utf-8"), passphrase.reveal().encode("utf-8") if passphrase else None)
    except (ValueError, TypeError):
        # Deliberately vague: the message must never echo key material.
        raise ConfigError(reader.key("certificate_key"),
                          "is not a PEM private key, or the passphrase is wrong or missing") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ConfigError(reader.key("certificate_key"), "must be an RSA key (Entra signs client assertions with RS256/PS256)")
    certified_key = cert.public_key()
    if not isinstance(certified_key, rsa.RSAPublicKey) or \
            private_key.public_key().public_numbers() != certified_key.public_numbers():
        raise ConfigError(reader.key("certificate_key"), f"does not belong to the certificate in {path}")
    return CertificateConfig(
        certificate_pem=pem.decode("ascii"),
        private_key=key,
        thumbprint=certificate_thumbprint(cert),
        passphrase=passphrase,
        send_x5c=send_x5c,
        path=path,
    )


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER certificate, upper-case hex: the "thumbprint" Entra displays."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


__all__ = [
    "CLOUDS", "GraphConfig", "CertificateConfig", "parse_graph_section", "certificate_thumbprint",
    "DEFAULT_MAX_REQUEST_SIZE", "DEFAULT_UPLOAD_CHUNK_SIZE", "DEFAULT_MAX_MESSAGE_SIZE",
]
