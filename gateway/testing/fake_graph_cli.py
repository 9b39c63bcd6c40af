"""
``graphsmtp-fake-graph``: run the fake Graph + Entra by hand, so graphsmtp can be tried end to
end without a Microsoft 365 tenant.

It prints the authority, the Graph URL, the CA certificate to trust and a ready ``[graph]``
section (the client secret goes to a 0600 file), then writes every message a mailbox "sends"
to ``<directory>/sent/<mailbox>/<n>.eml`` and logs one line for it (with ``--no-save``, the line
also counts the connections accepted so far).  Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, TextIO

from twisted.internet.defer import Deferred, inlineCallbacks

from gateway.testing.fake_graph import (
    FakeGraphServer,
    Fault,
    SentMessage,
    start_fake_graph,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphsmtp-fake-graph",
        description="Run a fake Microsoft Graph + Entra ID on loopback for trying graphsmtp without a tenant.")
    parser.add_argument("--directory", default="fake-graph",
                        help="where the test CA, the client secret and sent messages go (default: ./fake-graph)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port; 0 picks a free one (default: 8443)")
    parser.add_argument("--tenant", default="fake-tenant", help="tenant id the fake accepts")
    parser.add_argument("--client-id", default="00000000-0000-0000-0000-00000000c11e", help="app (client) id it accepts")
    parser.add_argument("--mailbox", action="append", default=None,
                        help="accept only these sending mailboxes (repeatable; default: any, others get 404)")
    parser.add_argument("--max-request-size", type=int, default=4_000_000,
                        help="bytes one request may carry before 413 (default: 4000000, like Graph)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds every send request (sendMail, draft send) waits before its answer, like a "
                             "real Graph's service time (default: 0)")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write sent messages to disk; print the one line per message only "
                             "(benchmarks)")
    return parser


def _secret_file(directory: str, secret: str) -> str:
    path = os.path.join(directory, "client-secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def describe(server: FakeGraphServer, secret_path: str, sent_dir: str) -> str:
    """What a user needs to point graphsmtp at the fake."""
    return "\n".join([
        "fake Microsoft Graph + Entra ID is running",
        f"  authority : {server.authority}",
        f"  graph_url : {server.graph_url}",
        f"  CA cert   : {server.ca_path}",
        f"  sent mail : {sent_dir}/<mailbox>/<n>.eml",
        "",
        "Add this to graphsmtp.toml (then run: twistd -n graphsmtp --config graphsmtp.toml):",
        "",
        "[graph]",
        f"tenant_id = {json.dumps(server.tenant_id)}",
        f"client_id = {json.dumps(server.client_id)}",
        f"client_secret_file = {json.dumps(secret_path)}",
        f"authority = {json.dumps(server.authority)}",
        f"graph_url = {json.dumps(server.graph_url)}",
        f"ca_bundle = {json.dumps(server.ca_path)}",
        "",
    ])


class _SentWriter:
    def __init__(self, directory: Optional[str], out: TextIO, server: Optional[FakeGraphServer] = None) -> None:
        self.directory = directory
        self.out = out
        self.server = server
        self.count = 0

    def __call__(self, message: SentMessage) -> None:
        self.count += 1
        if self.directory is None:
            # The connections accepted so far (Entra's included): bench_drain reads TLS
            # handshakes per message from it.
            connections = self.server.connections if self.server is not None else 0
            print(f"sent by {message.mailbox} ({message.kind}) #{self.count} connections {connections}",
                  file=self.out, flush=True)
            return
        folder = os.path.join(self.directory, message.mailbox.replace("/", "_"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.count}.eml" if message.mime is not None else f"{self.count}.json")
        with open(path, "wb") as f:
            f.write(message.mime if message.mime is not None else json.dumps(message.json, indent=2).encode("utf-8"))
        for attachment in message.attachments:
            with open(f"{path}.{attachment.name.replace('/', '_')}", "wb") as f:
                f.write(attachment.data)
        recipients = ", ".join(sorted(message.recipients))
        print(f"sent by {message.mailbox} ({message.kind}) to {recipients} -> {path}", file=self.out, flush=True)


@inlineCallbacks
def start(reactor: Any, args: argparse.Namespace, out: TextIO = sys.stdout):
    """Start the fake as the command would, print how to use it; fires with the server."""
    directory = os.path.abspath(args.directory)
    os.makedirs(directory, exist_ok=True)
    server = yield start_fake_graph(
        reactor, os.path.join(directory, "ca"), port=args.port, interface=args.interface,
        tenant_id=args.tenant, client_id=args.client_id, max_request_size=args.max_request_size,
        mailboxes=set(args.mailbox) if args.mailbox else None)
    secret_path = _secret_file(directory, server.client_secret)
    sent_dir = os.path.join(directory, "sent")
    if args.latency > 0:
        for operation in ("sendMail", "send"):
            server.inject(Fault.slow(args.latency), operation=operation, times=None)
    server.on_sent.append(_SentWriter(None if args.no_save else sent_dir, out, server))
    print(describe(server, secret_path, sent_dir), file=out, flush=True)
    return server


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    from twisted.internet import task

    def run(reactor: Any) -> Deferred:
        d = start(reactor, args)
        forever: Deferred = Deferred()
        d.addCallback(lambda server: forever)
        return d

    task.react(run)


if __name__ == "__main__":  # pragma: no cover
    main()
