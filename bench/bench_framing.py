"""
CPU per message of the DATA framing (L{gateway.smtp.framing.DataFraming}), alone.

Feeds the message shapes of ``smtp-source -l`` (78 ``X`` per line after a short header
section) of 10 KB and 1 MB, and a 1 MB text full of full stops, in the chunk sizes a TCP read
gives, and prints the CPU microseconds per message (process time, best of the repeats, so
other work on the machine counts as little as it can).  To compare with another version of
the module, pass its file: ``--other /tmp/old/framing.py``; the two are measured interleaved.

    python bench/bench_framing.py [--other PATH] [--repeat 7]

On the shared 2-core VM (2026-11-30, issue 13), the framing of ab9ef1c (``--other``) against
the one with ``memchr`` hops over dots and one ``splitlines`` for bare CR / LF:

    10 KB, one chunk            38.7 -> 19.3 us
    10 KB, 4 KB chunks          43.7 -> 25.5 us
    1 MB, 64 KB chunks        3911   -> 1442 us
    1 MB text, 64 KB chunks   3989   -> 2657 us   (dots everywhere: the CRLF "." search stays)

Instructions (valgrind --tool=callgrind, so the load of the machine does not count): framing
of the 1 MB message 26.9 M -> 19.0 M, the whole intake of a 10 KB message (framing, header
section, Received) 385 k -> 237 k.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any, Callable


def smtp_source_message(size: int) -> bytes:
    header = b"From: <a@example.com>\r\nTo: <b@example.com>\r\nDate: Mon, 30 Nov 2026 04:30:55 +0000 (UTC)\r\nMessage-Id: <1703.0003.0bae@vm>\r\n\r\n"
    line_count = size // 80
    body = b"".join(b"%d" % (i % 10) + b"X" * 77 + b"\r\n" for i in range(line_count))
    return header + body + b".\r\n"


def text_message(size: int) -> bytes:
    sentence = b"This is a sentence. It has full stops, e.g. here. And a URL: https://example.com/a.b\r\n"
    return b"Subject: text\r\n\r\n" + sentence * (size // len(sentence)) + b"..stuffed\r\n.\r\n"


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("framing_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DataFraming


def run(framing_class: Callable[[int], Any], pieces: list[bytes]) -> None:
    framing = framing_class(64 * 1024)
    for piece in pieces:
        _, rest = framing.feed(piece)
        if rest is not None:
            return
    raise AssertionError("no end of data")


def best_us(framing_class: Callable[[int], Any], pieces: list[bytes], number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            run(framing_class, pieces)
        best = min(best, (time.process_time() - start) / number)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", help="another framing.py to compare with (measured interleaved)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    from gateway.smtp.framing import DataFraming
    classes = {"this": DataFraming}
    if args.other:
        classes = {"other": load(args.other), "this": DataFraming}
    cases = [
        ("10 KB, one chunk", chunks(smtp_source_message(10240), 1 << 20), 300),
        ("10 KB, 4 KB chunks", chunks(smtp_source_message(10240), 4096), 300),
        ("1 MB, 64 KB chunks", chunks(smtp_source_message(1 << 20), 65536), 5),
        ("1 MB text, 64 KB chunks", chunks(text_message(1 << 20), 65536), 5),
    ]
    for name, pieces, number in cases:
        figures = {label: [] for label in classes}
        for _ in range(args.repeat):
            for label, framing_class in classes.items():
                figures[label].append(best_us(framing_class, pieces, number, 1))
        print(f"{name:26s} " + "  ".join(f"{label} {min(values):9.1f} us" for label, values in figures.items()))


if __name__ == "__main__":
    main()
