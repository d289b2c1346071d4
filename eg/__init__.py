"""eg: an L4 + L7 gateway on free-threaded CPython, one reactor thread per core.

A request travels one pipeline, whatever its protocol:

    ① listener     eg/reactor/listener.py   accept on a per-worker SO_REUSEPORT socket
    ② transport    eg/reactor/stream.py     non-blocking recv/sendmsg, interest mask
    ③ server codec eg/core/codec/*/server.py wire bytes -> RequestHead/Body/Trailers
    ④ exchange     eg/core/proxy/exchange.py one request/response, both halves, flow control
    ⑤ route        eg/core/proxy/route.py   RouteTable.match(head) -> Cluster -> endpoint
    ⑥ pool         eg/reactor/pool.py       per-worker upstream connections
    ⑦ client codec eg/core/codec/*/client.py messages -> wire bytes to the upstream

``eg/core`` is sans-I/O (time is passed in as ``now``); ``eg/reactor`` owns every
file descriptor, thread and timer. Importing this package has no side effects.
"""

__version__ = "0.1.0"
