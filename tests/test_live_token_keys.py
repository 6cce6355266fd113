"""A live token works in every worker as soon as it is minted, even for a key made since a
worker last read the keys; a token of a key that does not exist is refused with a reason
that says so. Runs ``metronome serve`` (two workers, the embedded store) with keys read
back only every ten minutes, so only the refresh a token asks for can make a new key known."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from metronome.live.token import TokenSigner
from tests.support.metronome_server import MetronomeServer

SECRET = "a-test-secret-for-signing-live-tokens"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer(
        {
            "METRONOME_SITES_CACHE_S": "600",
            "METRONOME_LIVE_SECRET": SECRET,
            "METRONOME_RATE_LIMIT_PER_IP": "0",
        },
        data_dir=tmp_path_factory.mktemp("tokens"),
        workers=2,
    )
    srv.cli_json("sites", "create", "--id", "demo", "--name", "Demo")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def _token(key_id: str | None, site: str = "demo") -> str:
    """A token as the worker that knew the key would mint it (same secret, same format)."""
    return TokenSigner(SECRET.encode()).mint(site, key_id, 300, time.time())[0]


def _query(server: MetronomeServer, token: str) -> httpx.Response:
    """``POST /query`` with ``token`` (a live token or a key) as the bearer."""
    return httpx.post(
        f"{server.url}/query",
        json={"range": "1h"},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_token_of_a_key_made_after_the_workers_read_the_keys_is_accepted(
    server: MetronomeServer,
) -> None:
    key = server.cli_json("keys", "create", "--site", "demo", "--scope", "query")
    secret = key["secret"]
    # the workers read the keys at start and not again for minutes: the key itself is
    # unknown to them (a plain key does not make a worker read the keys again)
    assert _query(server, secret).status_code == 401
    token = _token(key["id"])
    # connections are new each time: both workers answer some of these requests
    answers = [_query(server, token) for _ in range(8)]
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    # and the key is known now to a worker that refreshed for its token
    assert any(_query(server, secret).status_code == 200 for _ in range(8))


def test_a_token_of_a_key_that_does_not_exist_is_refused_and_says_so(
    server: MetronomeServer,
) -> None:
    refused = _query(server, _token("k_no_such_key"))
    assert refused.status_code == 401, refused.text
    body = refused.json()
    assert body["error"] == "invalid_key"
    assert "no longer exists" in body["message"], body


def test_a_token_signed_with_another_secret_is_refused(
    server: MetronomeServer,
) -> None:
    token = TokenSigner(b"not-the-server-secret").mint("demo", "k_x", 300, time.time())[0]
    refused = _query(server, token)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_key"
