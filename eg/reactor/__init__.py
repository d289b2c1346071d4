"""The I/O side: the only package that owns file descriptors, epoll, threads and timers.

It contains no protocol logic; it feeds bytes and ``now=time.monotonic()`` into
``eg.core`` and writes out what comes back.
"""
