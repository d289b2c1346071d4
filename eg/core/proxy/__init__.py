"""Proxy state machines: the exchange, routing, balancing. Pure, per worker."""
