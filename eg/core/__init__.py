"""Sans-I/O core: protocol codecs, proxy state machines, config and metrics.

Nothing here imports socket, select, ssl, threading or time; the current monotonic time
is always passed in as ``now``.
"""
