"""Placeholder (replaced by the steering module)."""

from __future__ import annotations

import socket
from collections.abc import Sequence


class Steering:
    mode = "none"

    @classmethod
    def attach(cls, socks: Sequence[socket.socket], *, prefer: str = "auto") -> Steering:
        return cls()

    def register(self, cid: bytes, worker: int) -> None:
        pass

    def unregister(self, cid: bytes) -> None:
        pass

    def close(self) -> None:
        pass
