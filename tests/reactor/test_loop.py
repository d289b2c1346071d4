"""Loop timers: lazy re-arming, release of closed owners, heap compaction."""

from __future__ import annotations

import gc
import weakref

from eg.reactor.loop import COMPACT_AT, Loop, Timer


class Owner:
    def __init__(self, loop: Loop) -> None:
        self.fired: list[float] = []
        self.timer = loop.timer(self.fire, self)

    def fire(self, now: float) -> None:
        self.fired.append(now)

    def on_crash(self, exc: BaseException) -> None:
        raise AssertionError("no crash expected")


def new_loop() -> Loop:
    def guard(owner: object, exc: BaseException) -> None:
        raise AssertionError(f"guard called: {exc!r}")

    return Loop(guard)


def test_rearming_later_does_not_grow_the_heap_and_fires_once() -> None:
    loop = new_loop()
    owner = Owner(loop)
    for i in range(100):
        owner.timer.arm(loop.now + 0.01 + i * 1e-6)
    assert len(loop._heap) == 1
    while not owner.fired:
        loop.run_once()
    assert len(owner.fired) == 1
    loop.close()


def test_released_timer_lets_its_closed_owner_go() -> None:
    loop = new_loop()
    owner = Owner(loop)
    owner.timer.arm(loop.now + 3600)  # a keep-alive deadline far away
    ref = weakref.ref(owner)
    owner.timer.release()
    del owner
    gc.collect()
    assert ref() is None, "the heap entry kept the closed connection alive"
    loop.close()


def test_released_entries_are_compacted() -> None:
    loop = new_loop()
    timers: list[Timer] = []
    for _ in range(3 * COMPACT_AT):
        owner = Owner(loop)
        owner.timer.arm(loop.now + 3600)
        timers.append(owner.timer)
    for timer in timers:
        timer.release()
    Owner(loop).timer.arm(loop.now + 3600)  # the next push compacts
    assert len(loop._heap) == 1
    timers[0].arm(loop.now)  # a released timer cannot come back
    assert len(loop._heap) == 1
    loop.close()
