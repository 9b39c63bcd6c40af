"""
Per-mailbox ready queues: which due entries may start now, mailbox by mailbox.

The queue runner moves an entry here once it is due; it leaves only when its sending mailbox
can start it: a delivery slot is free (``concurrency``), the mailbox is not paused (a 429's
Retry-After, a tenant pause) and its pacing token has arrived (``rate`` per minute with
``burst``, a GCRA).  A mailbox that cannot start sleeps on one heap entry (its pause end or
next token) or waits for a slot to free; its queued entries cost nothing meanwhile — no read,
no preparation, no timer per entry.  Mailboxes that can start are served round-robin, and the
global ``concurrency`` bounds the deliveries in flight over all of them.

Pure bookkeeping, no clock and no I/O: the runner passes ``now`` in and arms its one timer at
L{MailboxQueues.next_wake}.  Every operation is O(1) or O(log mailboxes), never per entry.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Hashable, Iterator, Optional

import attrs

IDLE, RUNNABLE, SLEEPING, FULL = "idle", "runnable", "sleeping", "full"


@attrs.define(eq=False)
class MailboxQueue:
    """One sending mailbox: its ready entries and what stops it starting the next one."""

    key: Hashable
    ready: deque = attrs.field(factory=deque)
    in_flight: int = 0
    paused_until: float = 0.0
    tat: float = 0.0  # GCRA theoretical arrival time
    state: str = IDLE
    sleep_at: Optional[float] = None
    started: int = 0
    max_in_flight: int = 0


class MailboxQueues:
    """
    ``concurrency``: deliveries in flight over all mailboxes (``None``: unbounded);
    ``limits(key)`` gives each mailbox's ``(concurrency or None, rate per minute or None,
    burst)``.
    """

    def __init__(self, concurrency: Optional[int], limits) -> None:
        self.concurrency = concurrency
        self._limits = limits
        self._queues: dict[Hashable, MailboxQueue] = {}
        self._runnable: deque = deque()
        self._sleeping: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._where: dict[str, Hashable] = {}
        self.in_flight = 0

    # -- what is queued ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, queue_id: str) -> bool:
        return queue_id in self._where

    def queue(self, key: Hashable) -> Optional[MailboxQueue]:
        return self._queues.get(key)

    def queues(self) -> list[MailboxQueue]:
        return list(self._queues.values())

    def ids(self) -> list[str]:
        return list(self._where)

    # -- entries ----------------------------------------------------------------------------

    def snapshot(self, now: float) -> list[tuple[Hashable, int, float, float, int]]:
        """
        Read-only view for the status page: ``(key, in_flight, paused_until, next_slot,
        waiting)`` per mailbox the runner knows now; ``next_slot`` is the earliest time its
        pacing lets the next message start.
        """
        return [(mq.key, mq.in_flight, mq.paused_until, max(mq.paused_until, self._next_token(mq, now)), len(mq.ready))
                for mq in self._queues.values()]

    def push(self, key: Hashable, queue_id: str, now: float, front: bool = False) -> None:
        """``queue_id`` is due and waits for ``key``'s mailbox (``front``: it goes next)."""
        if queue_id in self._where:
            return
        mq = self._queues.get(key)
        if mq is None:
            mq = self._queues[key] = MailboxQueue(key)
        if front:
            mq.ready.appendleft(queue_id)
        else:
            mq.ready.append(queue_id)
        self._where[queue_id] = key
        self._evaluate(mq, now)

    def discard(self, queue_id: str) -> bool:
        """Forget a waiting entry (deleted by an admin).  O(entries of its mailbox), rare."""
        key = self._where.pop(queue_id, None)
        if key is None:
            return False
        mq = self._queues[key]
        try:
            mq.ready.remove(queue_id)
        except ValueError:
            pass
        return True

    def take(self, now: float) -> Iterator[tuple[Hashable, str]]:
        """
        Yield ``(key, queue_id)`` for every entry that may start now, counting each as in
        flight until L{release}.  Mailboxes take turns.
        """
        self.wake(now)
        while self._runnable and (self.concurrency is None or self.in_flight < self.concurrency):
            mq = self._queues[self._runnable.popleft()]
            mq.state = IDLE
            if not self._can_start(mq, now):
                self._evaluate(mq, now)
                continue
            queue_id = mq.ready.popleft()
            del self._where[queue_id]
            self._start(mq, now)
            self._evaluate(mq, now)
            yield mq.key, queue_id

    def release(self, key: Hashable, now: float) -> None:
        """A delivery of ``key`` ended: its slot is free."""
        mq = self._queues.get(key)
        if mq is None or mq.in_flight <= 0:
            return
        mq.in_flight -= 1
        self.in_flight -= 1
        self._evaluate(mq, now)
        self._forget_if_idle(mq, now)

    def pause(self, key: Hashable, until: float, now: float) -> None:
        """Start nothing for ``key`` before ``until``; pacing restarts at the pause's end."""
        mq = self._queues.get(key)
        if mq is None:
            mq = self._queues[key] = MailboxQueue(key)
        if until > mq.paused_until:
            mq.paused_until = until
        mq.tat = max(mq.tat, mq.paused_until)
        if mq.state != FULL:
            self._evaluate(mq, now)

    def paused_until(self, key: Hashable) -> float:
        mq = self._queues.get(key)
        return mq.paused_until if mq is not None else 0.0

    # -- time -------------------------------------------------------------------------------

    def wake(self, now: float) -> None:
        """Mailboxes whose pause ended or whose pacing token arrived may start again."""
        while self._sleeping and self._sleeping[0][0] <= now:
            at, _, key = heapq.heappop(self._sleeping)
            mq = self._queues.get(key)
            if mq is not None and mq.state == SLEEPING and mq.sleep_at == at:
                mq.state, mq.sleep_at = IDLE, None
                self._evaluate(mq, now)

    def next_wake(self) -> Optional[float]:
        """When the earliest sleeping mailbox may start (``None``: no mailbox sleeps)."""
        while self._sleeping:
            at, _, key = self._sleeping[0]
            mq = self._queues.get(key)
            if mq is not None and mq.state == SLEEPING and mq.sleep_at == at:
                return at
            heapq.heappop(self._sleeping)
        return None

    def runnable(self) -> bool:
        """Some mailbox could start an entry if the global bound allowed it."""
        return bool(self._runnable)

    # -- internals --------------------------------------------------------------------------

    def _settings(self, key: Hashable) -> tuple[Optional[int], Optional[float], float]:
        concurrency, rate, burst = self._limits(key)
        if not rate:
            return concurrency, None, 0.0
        interval = 60.0 / rate
        return concurrency, interval, (max(burst, 1) - 1) * interval

    def _next_token(self, mq: MailboxQueue, now: float) -> float:
        _, interval, tolerance = self._settings(mq.key)
        if interval is None:
            return now
        return max(now, mq.tat - tolerance)

    def _can_start(self, mq: MailboxQueue, now: float) -> bool:
        if not mq.ready:
            return False
        concurrency, _, _ = self._settings(mq.key)
        if concurrency is not None and mq.in_flight >= concurrency:
            return False
        return mq.paused_until <= now and self._next_token(mq, now) <= now

    def _start(self, mq: MailboxQueue, now: float) -> None:
        _, interval, _ = self._settings(mq.key)
        if interval is not None:
            mq.tat = max(mq.tat, now) + interval
        mq.in_flight += 1
        mq.started += 1
        mq.max_in_flight = max(mq.max_in_flight, mq.in_flight)
        self.in_flight += 1

    def _evaluate(self, mq: MailboxQueue, now: float) -> None:
        """Put ``mq`` where its next start will come from: runnable, asleep, full or idle."""
        if mq.state == RUNNABLE:
            return  # re-checked when its turn comes
        if not mq.ready:
            mq.state, mq.sleep_at = IDLE, None
            return
        concurrency, _, _ = self._settings(mq.key)
        if concurrency is not None and mq.in_flight >= concurrency:
            mq.state, mq.sleep_at = FULL, None  # woken by release()
            return
        at = max(mq.paused_until, self._next_token(mq, now))
        if at > now:
            if mq.state == SLEEPING and mq.sleep_at == at:
                return
            mq.state, mq.sleep_at = SLEEPING, at
            heapq.heappush(self._sleeping, (at, next(self._seq), mq.key))
            return
        mq.state, mq.sleep_at = RUNNABLE, None
        self._runnable.append(mq.key)

    def _forget_if_idle(self, mq: MailboxQueue, now: float) -> None:
        if mq.state == IDLE and not mq.ready and not mq.in_flight and mq.paused_until <= now and mq.tat <= now:
            del self._queues[mq.key]


__all__ = ["MailboxQueues", "MailboxQueue"]
