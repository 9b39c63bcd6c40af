"""
Shared by the status tests: a whole gateway delivering into the fake Graph with a status
endpoint, traffic that leaves one message delivered, one deferred (its mailbox throttled for an
hour) and one failed, a plain HTTP client, and a small HTML table reader.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from typing import Any, Callable, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message, start_gateway

DELIVERED_FROM = "scanner@corp.example"
DEFERRED_FROM = "busy@corp.example"
FAILED_FROM = "ghost@corp.example"


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello\r\n").encode()


@inlineCallbacks
def start_status_gateway(case: Any, status: Optional[dict] = None, extra: Optional[dict] = None,
                         before: Optional[Callable[[Any], None]] = None) -> Any:
    """
    A Graph gateway with ``[status]`` on loopback; returns ``(gateway, fake_graph, base_url)``.
    ``before(fake)`` runs before the gateway starts: a fault of the token endpoint must be in
    place by then, or the gateway's start-up token probe may get a token ahead of it.
    """
    fake = yield start_fake_graph(reactor, os.path.abspath(case.mktemp()))
    case.addCleanup(fake.stop)
    if before is not None:
        before(fake)
    data = {
        "graph": {
            "tenant_id": fake.tenant_id, "client_id": fake.client_id, "client_secret": fake.client_secret,
            "authority": fake.authority, "graph_url": fake.graph_url, "ca_bundle": fake.ca_path,
        },
        "queue": {"retry_schedule": ["1h"], "jitter": 0.0},
        "status": dict({"endpoint": "tcp:0:interface=127.0.0.1", "refresh": 0}, **(status or {})),
        "listener": [{
            "name": "local", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.1/32"],
            "policies": [{"use": "recipient-rules", "deny": ["*@blocked.example"]}],
        }],
    }
    data.update(extra or {})
    gw = yield start_gateway(case, data)
    port = yield gw.status_port()
    return gw, fake, f"http://127.0.0.1:{port}"


@inlineCallbacks
def make_traffic(gw: Any, fake: Any) -> Any:
    """One delivered, one deferred (mailbox paused for an hour), one failed; returns their entries."""
    fake.inject(Fault.throttled(retry_after="3600"), mailbox=DEFERRED_FROM, times=None)
    fake.inject(Fault.status_code(404, "ErrorInvalidUser", "The requested user is invalid."),
                mailbox=FAILED_FROM, times=None)
    port = gw.port("local")
    yield send_message(port, DELIVERED_FROM, ["alice@corp.example"], message(DELIVERED_FROM, "alice@corp.example", "ok"))
    yield send_message(port, DEFERRED_FROM, ["bob@fabrikam.example"], message(DEFERRED_FROM, "bob@fabrikam.example", "later"))
    yield send_message(port, FAILED_FROM, ["carol@corp.example"], message(FAILED_FROM, "carol@corp.example", "nope"))
    events = yield gw.outcomes(3)
    return {kind: entry for kind, entry, _ in events}


def http_client(case: Any) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=False)
    case.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


@inlineCallbacks
def get(client: Any, url: str, **kwargs: Any) -> Any:
    response = yield client.get(url, timeout=20, **kwargs)
    body = yield response.content()
    return response, body


class PageReader(HTMLParser):
    """
    Collects what a person sees: every ``<table id=...>`` as rows of cell texts, every element
    id, the title and the meta refresh.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: set[str] = set()
        self.title = ""
        self.meta_refresh: Optional[str] = None
        self.scripts = 0
        self._table: Optional[str] = None
        self._row: Optional[list[str]] = None
        self._cell: Optional[list[str]] = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")
        elif tag == "title":
            self._in_title = True
        elif tag == "meta" and attributes.get("http-equiv") == "refresh":
            self.meta_refresh = attributes.get("content")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data

    def rows(self, table_id: str) -> list[dict[str, str]]:
        """The table's body rows as dicts keyed by the header texts."""
        header, *body = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in body]


def read_page(body: bytes) -> PageReader:
    reader = PageReader()
    reader.feed(body.decode("utf-8"))
    reader.close()
    return reader
