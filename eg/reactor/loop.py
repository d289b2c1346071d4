"""One epoll loop per worker thread, with a timer heap.

``now`` is read once per iteration (``time.monotonic()``) and passed inward, the way
aioquic's ``receive_datagram(data, addr, now)`` takes it. Timers are lazy: a ``Timer``
keeps a single heap entry and, when it fires early because its deadline moved later,
re-queues itself instead of growing the heap on every re-arm (connections re-arm their
timer on every request).

Every callback into connection code goes through ``guard`` (the worker's per-connection
guard), so an unexpected exception closes that one connection, never the worker.
"""

from __future__ import annotations

import contextlib
import heapq
import select
import time
from collections.abc import Callable
from typing import Protocol

#: Most events taken from epoll per wakeup.
MAX_EVENTS = 1024
#: Released timer entries tolerated in the heap before it is compacted.
COMPACT_AT = 1024
#: Longest sleep when no timer is due (keeps mailbox/drain checks responsive).
MAX_SLEEP = 1.0

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP


class Guarded(Protocol):
    """Anything whose callbacks run under the per-connection guard."""

    def on_crash(self, exc: BaseException) -> None:
        """Called by the guard after an unexpected exception: close quietly."""
        ...


class Handler(Guarded, Protocol):
    """Anything registered with the loop for a file descriptor."""

    def on_events(self, mask: int) -> None: ...


class Timer:
    """A re-armable deadline owned by one handler."""

    __slots__ = ("_loop", "callback", "deadline", "owner", "queued_at", "released")

    def __init__(self, loop: Loop, callback: Callable[[float], None], owner: Guarded) -> None:
        self._loop = loop
        self.callback = callback
        self.owner = owner
        #: When the callback should run; None when disarmed.
        self.deadline: float | None = None
        #: The deadline of this timer's heap entry, if it has one.
        self.queued_at: float | None = None
        #: The owner is gone; the heap entry only waits to be dropped.
        self.released = False

    def arm(self, deadline: float) -> None:
        if self.released:
            return
        self.deadline = deadline
        if self.queued_at is None or deadline < self.queued_at:
            self.queued_at = deadline
            self._loop._push(deadline, self)

    def cancel(self) -> None:
        self.deadline = None

    def release(self) -> None:
        """The owner closed: drop the references that would keep it alive.

        A lazily cancelled heap entry would otherwise hold the closed connection (through
        the bound callback) until its old deadline, up to the keep-alive timeout: at a few
        thousand connections per second that is hundreds of megabytes.
        """
        self.deadline = None
        if not self.released:
            self.released = True
            self.callback = _noop
            self.owner = _NOBODY
            if self.queued_at is not None:
                self._loop._released += 1


def _noop(now: float) -> None:
    """The callback of a released timer."""


class _Nobody:
    """The owner of a released timer."""

    def on_crash(self, exc: BaseException) -> None:
        """Nothing left to close."""


_NOBODY = _Nobody()


class Loop:
    """epoll + timers for one worker thread.

    Args:
        guard: called as ``guard(handler, exc)`` when a handler or timer raises.
    """

    def __init__(self, guard: Callable[[Guarded, BaseException], None]) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        #: Heap entries of released timers; the heap is compacted when they dominate.
        self._released = 0
        self._guard = guard
        self._soon: list[Callable[[], None]] = []
        #: Called after every iteration (flush the access log, ...).
        self.after: list[Callable[[], None]] = []
        self.now = time.monotonic()
        self.running = True

    def register(self, fd: int, mask: int, handler: Handler) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)

    def timer(self, callback: Callable[[float], None], owner: Guarded) -> Timer:
        return Timer(self, callback, owner)

    def guarded(self, owner: Guarded, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` for ``owner`` under the per-connection guard: for
        handlers that serve many connections (a QUIC listener feeding each datagram to
        its connection), so a failure closes that connection, not the whole handler."""
        try:
            callback(*args)
        except Exception as exc:  # the per-connection guard (see worker.py)
            self._guard(owner, exc)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the current batch of events (outside any handler).

        Like handlers and timers it runs under the per-connection guard: pass a bound
        method of the connection it works for, whose ``on_crash`` then closes it.
        """
        self._soon.append(callback)

    def _push(self, deadline: float, timer: Timer) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, timer))
        if self._released > COMPACT_AT and self._released * 2 > len(self._heap):
            # In place: run_once holds a reference to this list while timers fire.
            self._heap[:] = [entry for entry in self._heap if not entry[2].released]
            heapq.heapify(self._heap)
            self._released = 0

    def run_once(self) -> None:
        heap = self._heap
        if self._soon:
            timeout = 0.0
        elif heap:
            timeout = min(max(heap[0][0] - self.now, 0.0), MAX_SLEEP)
        else:
            timeout = MAX_SLEEP
        events = self.epoll.poll(timeout, MAX_EVENTS)
        self.now = now = time.monotonic()
        handlers = self.handlers
        guard = self._guard
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler.on_events(mask)
            except Exception as exc:  # the per-connection guard (see worker.py)
                guard(handler, exc)
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            timer.queued_at = None
            if timer.released:
                self._released -= 1
                continue
            deadline = timer.deadline
            if deadline is None:
                continue
            if deadline > now:
                timer.queued_at = deadline
                self._push(deadline, timer)
                continue
            timer.deadline = None
            try:
                timer.callback(now)
            except Exception as exc:  # the per-connection guard (see worker.py)
                guard(timer.owner, exc)
        while self._soon:
            soon, self._soon = self._soon, []
            for callback in soon:
                try:
                    callback()
                except Exception as exc:  # the per-connection guard (see worker.py)
                    # A deferred call is a bound method of the connection it is for.
                    guard(getattr(callback, "__self__", _NOBODY), exc)
        for hook in self.after:
            hook()

    def close(self) -> None:
        self.epoll.close()
