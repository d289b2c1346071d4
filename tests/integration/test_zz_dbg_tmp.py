import pytest
from pathlib import Path
from tests.integration.test_h3_peers import *  # noqa
from tests.integration.test_h3_peers import peer_request, BACKS, CLIENTS, MiB

@pytest.mark.parametrize("name", sorted(CLIENTS))
@pytest.mark.parametrize("back", sorted(BACKS))
def test_dbg(front_gw: Gateway, certs: Path, name: str, back: str) -> None:
    r = peer_request(CLIENTS[name], front_gw, certs, BACKS[back], f"/reset-mid-body?size={4*MiB}")
    print("ERR", name, back, r.error, len(r.body))
    print([l for l in front_gw.metrics().splitlines() if l.startswith("eg_requests_total")])
