"""
The human status page at ``/``: one server-rendered HTML page (``twisted.web.template``), a
little CSS, no JavaScript, an optional ``<meta http-equiv="refresh">``.

Sections: gateway (version, uptime, listeners), Graph tenants (token state, expiry, last error
and what an admin should do, per-mailbox pacing), queue (counts by state, oldest message,
qshape-like tables by sending mailbox and by recipient domain, top deferral reasons, failed
messages) and recent outcomes.  Every value comes from an L{IStatusSource}; text is escaped
by the template engine, and nothing secret is ever in a source.

Each table has an ``id`` (``listeners``, ``tenants``, ``mailboxes``, ``queue-counts``,
``shape-mailbox``, ``shape-domain``, ``deferral-reasons``, ``failed``, ``recent``) so scripts
and tests can find them.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Sequence, Union

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.template import Element, Flattenable, Tag, XMLString, renderElement, renderer, tags

from gateway.status.interfaces import IStatusSource, QueueView

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1d2329; background: #f4f6f8; }
header { background: #1f3b57; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 2px 0 0; color: #c9d6e3; }
main { padding: 8px 24px 24px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; margin: 14px 0; padding: 10px 16px; }
h2 { font-size: 16px; margin: 4px 0 8px; }
h3 { font-size: 14px; margin: 12px 0 6px; color: #39424a; }
table { border-collapse: collapse; width: 100%; margin-bottom: 6px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6eaee; vertical-align: top; }
th { background: #eef2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.nowrap { white-space: nowrap; }
table.compact { width: auto; }
table.compact th, table.compact td { padding: 4px 18px; }
.empty { color: #6a737d; font-style: italic; }
.state { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600; font-size: 12px; }
.s-ok, .s-listening, .s-delivered { background: #dcf5e3; color: #14632f; }
.s-degraded, .s-deferred, .s-starting, .s-unknown { background: #fff1c2; color: #6b4d00; }
.s-needs-admin, .s-failed, .s-stopped { background: #fbd9d9; color: #8a1212; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 32px; margin: 0 0 6px; }
.facts dt { color: #6a737d; font-size: 12px; }
.facts dd { margin: 0; font-size: 16px; font-weight: 600; }
.action { color: #8a1212; }
code { font-size: 13px; }
"""

TEMPLATE = """<html xmlns:t="http://twistedmatrix.com/ns/twisted.web.template/0.1" lang="en">
<head>
<meta charset="utf-8" />
<t:transparent t:render="refresh" />
<title t:render="title" />
<style t:render="css" />
</head>
<body>
<header t:render="header" />
<main>
<section id="gateway"><h2>Gateway</h2><t:transparent t:render="gateway" /></section>
<section id="graph"><h2>Microsoft Graph</h2><t:transparent t:render="tenants" /></section>
<section id="queue"><h2>Queue</h2><t:transparent t:render="queue" /></section>
<section id="outcomes"><h2>Recent outcomes</h2><t:transparent t:render="recent" /></section>
</main>
</body>
</html>
"""


def utc(when: Optional[float]) -> str:
    if not when:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def duration(seconds: Optional[float]) -> str:
    """``42s``, ``5m 03s``, ``2h 05m``, ``3d 04h``."""
    if seconds is None:
        return "-"
    seconds = int(max(0, round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {m:02d}m"
    days, h = divmod(hours, 24)
    return f"{days}d {h:02d}h"


def relative(when: Optional[float], now: float) -> str:
    if not when:
        return "-"
    delta = when - now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"


def badge(state: str) -> Tag:
    return tags.span(state, class_=f"state s-{state.replace(' ', '-')}")


def table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[Flattenable]], numeric: Sequence[int] = (),
          empty: str = "nothing to show", nowrap: Sequence[int] = (), compact: bool = False) -> Tag:
    rows = list(rows)
    if not rows:
        return tags.p(empty, class_="empty", id=table_id)

    def cell(make: Callable[..., Tag], i: int, content: Flattenable) -> Tag:
        classes = " ".join(c for c, on in (("num", i in numeric), ("nowrap", i in nowrap)) if on)
        return make(content, class_=classes) if classes else make(content)

    head = tags.tr(*[cell(tags.th, i, h) for i, h in enumerate(headers)])
    body = [tags.tr(*[cell(tags.td, i, c) for i, c in enumerate(row)]) for row in rows]
    table_tag = tags.table(tags.thead(head), tags.tbody(*body), id=table_id)
    return table_tag(class_="compact") if compact else table_tag


def facts(items: Iterable[tuple[str, Union[str, int, float]]]) -> Tag:
    return tags.dl(*[tags.div(tags.dt(k), tags.dd(_text(v))) for k, v in items], class_="facts")


def _text(value: Union[str, int, float]) -> str:
    return str(value) if isinstance(value, (int, float)) else value


class StatusPage(Element):
    """The page for one request: ``view`` is the queue read for it (None if that failed)."""

    loader = XMLString(TEMPLATE)

    def __init__(self, source: IStatusSource, view: Optional[QueueView], refresh: int = 0,
                 queue_error: str = "") -> None:
        super().__init__()
        self.source = source
        self.info = source.gateway()
        self.view = view
        self.refresh_seconds = refresh
        self.queue_error = queue_error

    @renderer
    def refresh(self, request: Optional[IRequest], tag: Tag) -> Flattenable:
        if self.refresh_seconds > 0:
            return tags.meta(**{"http-equiv": "refresh", "content": str(self.refresh_seconds)})
        return ""

    @renderer
    def title(self, request: Optional[IRequest], tag: Tag) -> Tag:
        return tag(f"graphsmtp status — {self.info.hostname}")

    @renderer
    def css(self, request: Optional[IRequest], tag: Tag) -> Tag:
        return tag(CSS)

    @renderer
    def header(self, request: Optional[IRequest], tag: Tag) -> Tag:
        return tag(tags.h1(f"graphsmtp on {self.info.hostname}"),
                   tags.p(f"as of {utc(self.info.now)}"
                          + (f" · refreshes every {self.refresh_seconds}s" if self.refresh_seconds > 0 else "")))

    @renderer
    def gateway(self, request: Optional[IRequest], tag: Tag) -> Flattenable:
        info = self.info
        totals = self.source.totals()
        listeners = self.source.listeners()
        return [
            facts([("version", info.version), ("host", info.hostname), ("up since", utc(info.started_at)),
                   ("uptime", duration(info.uptime)), ("delivered", totals.delivered),
                   ("deferred", totals.deferred), ("failed", totals.failed),
                   ("possibly delivered", totals.possibly_delivered)]),
            tags.h3("Listeners"),
            table("listeners", ("name", "endpoint", "TLS", "AUTH", "open sessions", "transactions", "state"),
                  [(l.name, tags.code(l.endpoint), l.tls, l.auth, str(l.sessions), str(l.transactions),
                    badge(l.state)) for l in listeners], numeric=(4, 5), empty="no listener configured"),
        ]

    @renderer
    def tenants(self, request: Optional[IRequest], tag: Tag) -> Flattenable:
        now = self.info.now
        tenants = self.source.tenants()
        mailboxes = self.source.mailboxes()
        rows = []
        for t in tenants:
            error: Flattenable = t.last_error or "-"
            if t.admin_action:
                error = [t.last_error or "-", tags.br(), tags.span("Action: " + t.admin_action, class_="action")]
            expiry = f"{utc(t.token_expires_at)} ({relative(t.token_expires_at, now)})" if t.token_expires_at else "-"
            paused = relative(t.paused_until, now) if t.paused_until > now else "-"
            rows.append((t.label, badge(t.state), utc(t.since), expiry, paused, error))
        return [
            table("tenants", ("tenant", "token state", "since", "token expires", "paused until", "last error"),
                  rows, empty="no Graph tenant (the capture deliverer writes to the local outbox)", nowrap=(1, 2, 3)),
            tags.h3("Sending mailboxes (pacing)"),
            table("mailboxes", ("mailbox", "in flight", "paused until", "reason", "next slot"),
                  [(m.mailbox, str(m.in_flight), relative(m.paused_until, now) if m.paused_until > now else "-",
                    m.pause_reason if m.paused_until > now else "-",
                    "now" if m.next_slot <= now + 0.5 else relative(m.next_slot, now)) for m in mailboxes],
                  numeric=(1,), empty="no mailbox has sent yet"),
        ]

    @renderer
    def queue(self, request: Optional[IRequest], tag: Tag) -> Flattenable:
        view = self.view
        if view is None:
            return tags.p(f"The spool could not be read: {self.queue_error or 'unknown error'}", class_="action")
        counts = view.counts
        oldest = duration(view.oldest_age) if view.oldest_age is not None else "-"
        parts: list[Flattenable] = [
            table("queue-counts", ("queued", "active", "deferred", "waiting", "failed", "oldest message"),
                  [(str(view.queued), str(counts.get("active", 0)), str(counts.get("deferred", 0)),
                    str(counts.get("waiting", 0)), str(counts.get("failed", 0)), oldest)],
                  numeric=(0, 1, 2, 3, 4, 5), compact=True),
        ]
        if view.examined < view.queued:
            parts.append(tags.p(f"Tables below summarise the oldest {view.examined} of {view.queued} queued messages.",
                                class_="empty"))
        headers = ("", "total") + tuple(view.bucket_labels)
        numeric = tuple(range(1, len(headers)))
        parts += [
            tags.h3("By sending mailbox × age"),
            table("shape-mailbox", ("mailbox",) + headers[1:],
                  [(r.key, str(r.total), *[str(c) for c in r.counts]) for r in view.by_mailbox], numeric=numeric,
                  empty="the queue is empty"),
            tags.h3("By recipient domain × age"),
            table("shape-domain", ("domain",) + headers[1:],
                  [(r.key, str(r.total), *[str(c) for c in r.counts]) for r in view.by_domain], numeric=numeric,
                  empty="the queue is empty"),
            tags.h3("Top deferral reasons"),
            table("deferral-reasons", ("reason", "messages"), [(r, str(n)) for r, n in view.deferral_reasons],
                  numeric=(1,), empty="no deferred message"),
            tags.h3("Failed messages"),
            table("failed", ("queue id", "received", "from", "to", "reason"),
                  [(tags.code(f.queue_id), utc(f.received_at), f.sender or "<>", ", ".join(f.recipients), f.reason)
                   for f in view.failed], empty="no failed message", nowrap=(0, 1)),
        ]
        return parts

    @renderer
    def recent(self, request: Optional[IRequest], tag: Tag) -> Flattenable:
        return table("recent", ("time", "queue id", "from", "to", "mailbox", "status", "delay", "detail"),
                     [(utc(r.at), tags.code(r.queue_id), r.sender or "<>", ", ".join(r.recipients), r.mailbox or "-",
                       badge(r.status), duration(r.delay), r.detail) for r in self.source.recent()],
                     numeric=(6,), empty="no delivery since start", nowrap=(0, 1, 5, 6))


class StatusPageResource(Resource):
    """``GET /``: reads the queue (in a thread), then renders L{StatusPage}."""

    isLeaf = True
    log = Logger()

    def __init__(self, source: IStatusSource, refresh: int = 0) -> None:
        super().__init__()
        self.source = source
        self.refresh = refresh

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
        finished = request.notifyFinish()
        gone: list[bool] = []
        finished.addErrback(lambda _: gone.append(True))

        def render(view: Optional[QueueView], error: str = "") -> None:
            if gone:
                return
            try:
                page = StatusPage(self.source, view, self.refresh, error)
            except Exception:
                self.log.failure("the status page could not be built")
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"The status page could not be built; the gateway log has the details.\n")
                request.finish()
                return
            renderElement(request, page)

        def failed(failure: Failure) -> None:
            self.log.warn("status page: the spool could not be read: {error}", error=failure.getErrorMessage())
            render(None, failure.getErrorMessage()[:200])

        self.source.queue().addCallbacks(render, failed)
        return NOT_DONE_YET


__all__ = ["StatusPage", "StatusPageResource", "duration", "utc"]
