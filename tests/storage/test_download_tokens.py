"""Local download links: a signed token the API route verifies before streaming the file."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import Forbidden
from core.storage import (
    LocalStore,
    decode_download_token,
    get_store,
    sign_download_token,
    verify_download_token,
)

from .conftest import SIGNING_SECRET


@pytest.fixture
def store(local_settings) -> LocalStore:
    return get_store(local_settings)


def token_of(url: str) -> str:
    prefix = "http://tuneforge.test/v1/downloads/"
    assert url.startswith(prefix)
    return url[len(prefix):]


def test_valid_token_returns_key_and_grant(store):
    store.put_bytes("jobs/ftjob-1/adapter.safetensors", b"x")
    url, expires_at = store.signed_url("jobs/ftjob-1/adapter.safetensors", 600, filename="adapter.safetensors")
    assert abs((expires_at - datetime.now(UTC)).total_seconds() - 600) < 2
    token = token_of(url)
    assert verify_download_token(token, SIGNING_SECRET) == "jobs/ftjob-1/adapter.safetensors"
    grant = decode_download_token(token, SIGNING_SECRET)
    assert (grant.filename, grant.expires_at) == ("adapter.safetensors", expires_at)
    assert "/" not in token and "?" not in token  # one URL path segment


def flip(token: str, i: int) -> str:
    """Change the high bits of one base64 character (the last character's low bits are padding,
    so e.g. A->B there would decode to the same signature)."""
    return token[:i] + ("A" if token[i] not in "ABCD" else "w") + token[i + 1:]


def test_tampered_token_is_forbidden(store):
    token = token_of(store.signed_url("jobs/a", 600)[0])
    for bad in (flip(token, 0), flip(token, len(token) // 2), flip(token, len(token) - 1), token + "x", "", "garbage"):
        with pytest.raises(Forbidden) as exc:
            verify_download_token(bad, SIGNING_SECRET)
        assert (exc.value.status_code, exc.value.code) == (403, "invalid_signature")


def test_token_for_another_key_cannot_be_forged_from_a_valid_one(store):
    """Swapping the payload while keeping the signature must fail: the signature covers the key."""
    token_a = token_of(store.signed_url("jobs/a", 600)[0])
    token_b = token_of(store.signed_url("jobs/b", 600)[0])
    payload_b, sig_a = token_b.rsplit(".", 1)[0], token_a.rsplit(".", 1)[1]
    with pytest.raises(Forbidden):
        verify_download_token(f"{payload_b}.{sig_a}", SIGNING_SECRET)


def test_other_secret_is_forbidden(store):
    token = token_of(store.signed_url("jobs/a", 600)[0])
    with pytest.raises(Forbidden):
        verify_download_token(token, "another-secret-0123456789abcdef")
    with pytest.raises(Forbidden):
        verify_download_token(token, "")


def test_expired_token_is_forbidden():
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(Forbidden, match="expired"):
        verify_download_token(sign_download_token("jobs/a", SIGNING_SECRET, past), SIGNING_SECRET)


def test_token_lives_exactly_its_ttl(store):
    """Expiry is kept to the millisecond: rounded down to the second, a link lived up to 1 s
    less than its TTL (and a 1 s link could be dead when handed out)."""
    before = time.time()
    url, expires_at = store.signed_url("jobs/a", 2)
    after = time.time()
    token = token_of(url)
    granted = decode_download_token(token, SIGNING_SECRET).expires_at.timestamp()
    assert before + 2 - 0.001 <= granted <= after + 2 + 0.001
    assert abs(granted - expires_at.timestamp()) < 0.001  # the link and its reported expiry agree
    assert verify_download_token(token, SIGNING_SECRET) == "jobs/a"
    time.sleep(max(0.0, granted - time.time()) + 0.01)
    with pytest.raises(Forbidden, match="expired"):
        verify_download_token(token, SIGNING_SECRET)


def test_signing_without_a_secret_is_refused(tmp_path):
    store = LocalStore(tmp_path, public_url="http://x", secret="")
    with pytest.raises(RuntimeError, match="TUNEFORGE_SECRET_KEY"):
        store.signed_url("a", 60)
