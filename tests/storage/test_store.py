"""Both artifact stores through one suite: the local directory and S3 (a real moto server process)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.errors import InvalidRequest, NotFound, TooLarge
from core.storage import CHUNK_BYTES, LocalStore, S3Store, get_store

from .conftest import SIGNING_SECRET


@pytest.fixture(params=["local", "s3"])
def store(request):
    settings = request.getfixturevalue(f"{request.param}_settings")
    return get_store(settings)


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tree(root: Path) -> dict[str, bytes]:
    files = {
        "adapter_model.safetensors": payload(3000, 1),
        "adapter_config.json": b'{"r": 16}',
        "tokenizer/tokenizer.json": payload(500, 2),
        "tokenizer/nested/deep/x.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_bytes_roundtrip(store, tmp_path):
    data = payload(1234)
    obj = store.put_bytes("jobs/ftjob-1/metrics.json", data)
    assert (obj.key, obj.bytes, obj.sha256) == ("jobs/ftjob-1/metrics.json", 1234, sha(data))
    assert store.exists("jobs/ftjob-1/metrics.json")
    dest = store.get_file("jobs/ftjob-1/metrics.json", tmp_path / "out" / "m.json")
    assert dest.read_bytes() == data
    with store.open("jobs/ftjob-1/metrics.json") as f:
        assert f.read() == data


def test_overwrite_replaces_content(store):
    store.put_bytes("a/b", b"old content")
    store.put_bytes("a/b", b"new")
    with store.open("a/b") as f:
        assert f.read() == b"new"


def test_large_stream_and_file_hash_while_copying(store, tmp_path):
    data = payload(2 * CHUNK_BYTES + 123, 7)  # several chunks, not a multiple of the chunk size
    obj = store.put_stream("big/stream.bin", io.BytesIO(data), max_bytes=len(data))  # exactly at the limit
    assert (obj.bytes, obj.sha256) == (len(data), sha(data))
    src = tmp_path / "src.bin"
    src.write_bytes(data[::-1])
    obj = store.put_file("big/file.bin", src)
    assert (obj.bytes, obj.sha256) == (len(data), sha(data[::-1]))
    with store.open("big/stream.bin") as f:
        chunks = iter(lambda: f.read(65536), b"")
        assert b"".join(chunks) == data
    assert store.get_file("big/file.bin", tmp_path / "back.bin").read_bytes() == data[::-1]


def test_stream_over_limit_is_refused_and_leaves_nothing(store):
    store.put_bytes("up/keep.bin", b"x")
    with pytest.raises(TooLarge, match="1048576 bytes") as exc:
        store.put_stream("up/file.bin", io.BytesIO(payload(CHUNK_BYTES + 1)), max_bytes=CHUNK_BYTES)
    assert exc.value.status_code == 413
    assert not store.exists("up/file.bin")
    if isinstance(store, LocalStore):  # no temp file lingers next to the target
        assert sorted(p.name for p in (store.root / "up").iterdir()) == ["keep.bin"]


def test_missing_keys(store, tmp_path):
    assert not store.exists("nope/x")
    with pytest.raises(NotFound):
        store.get_file("nope/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(NotFound):
        store.open("nope/x")
    store.delete("nope/x")  # deleting what is gone is not an error
    store.delete_prefix("nope")


def test_delete(store):
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    assert store.exists("d/two")


def test_dir_roundtrip(store, tmp_path):
    src = tmp_path / "src"
    files = write_tree(src)
    objs = store.upload_dir("jobs/ftjob-2/checkpoint-10", src)
    assert sorted(o.key for o in objs) == sorted(f"jobs/ftjob-2/checkpoint-10/{rel}" for rel in files)
    assert {o.key.split("checkpoint-10/")[1]: o.sha256 for o in objs} == {r: sha(d) for r, d in files.items()}
    dest = store.download_dir("jobs/ftjob-2/checkpoint-10", tmp_path / "dest")
    assert read_tree(dest) == files


def test_download_dir_of_empty_prefix_is_not_found(store, tmp_path):
    with pytest.raises(NotFound):
        store.download_dir("jobs/none", tmp_path / "dest")


def test_prefixes_respect_segment_boundaries(store, tmp_path):
    store.put_bytes("runs/1/a", b"a")
    store.put_bytes("runs/1/sub/b", b"b")
    store.put_bytes("runs/10/c", b"c")
    store.put_bytes("runs/1.json", b"a sibling whose name starts like the prefix")
    assert read_tree(store.download_dir("runs/1", tmp_path / "d")) == {"a": b"a", "sub/b": b"b"}
    store.delete_prefix("runs/1")
    assert not store.exists("runs/1/a") and not store.exists("runs/1/sub/b")
    assert store.exists("runs/10/c") and store.exists("runs/1.json")


BAD_KEYS = ["../x", "a/../../x", "..", "/etc/passwd", "a\\..\\b", "", "a//b", "a/./b", "a/", "a/.tuneforge-part-1"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_escape_are_refused(store, tmp_path, key):
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_stream(key, io.BytesIO(b"x")),
        lambda: store.get_file(key, tmp_path / "x"),
        lambda: store.open(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.delete_prefix(key),
        lambda: store.upload_dir(key, tmp_path),
        lambda: store.download_dir(key, tmp_path / "d"),
        lambda: store.signed_url(key, 60),
    ):
        with pytest.raises(InvalidRequest):
            call()
    assert list(tmp_path.rglob("*")) == []  # the local store's root lives here too: nothing was written


@pytest.mark.parametrize("ttl", [0, -5, 7 * 24 * 3600 + 1])
def test_link_lifetime_bounds(store, ttl):
    store.put_bytes("k", b"x")
    with pytest.raises(ValueError, match="ttl_seconds"):
        store.signed_url("k", ttl)


def test_get_store_parses_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = get_store(Settings(artifacts_url=f"file://{tmp_path}/a", secret_key=SIGNING_SECRET))
    assert isinstance(absolute, LocalStore) and absolute.root == tmp_path / "a"
    relative = get_store(Settings(artifacts_url="file://rel/dir", secret_key=SIGNING_SECRET))
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "rel" / "dir"
    s3 = get_store(Settings(artifacts_url="s3://bucket/some/prefix/", secret_key=SIGNING_SECRET))
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    bare = get_store(Settings(artifacts_url="s3://bucket", secret_key=SIGNING_SECRET))
    assert isinstance(bare, S3Store) and bare.prefix == ""
    for bad in ("gs://bucket/x", "s3://", "file://", "/plain/path", "s3://bucket/../x"):
        with pytest.raises((ValueError, InvalidRequest)):
            get_store(Settings(artifacts_url=bad, secret_key=SIGNING_SECRET))


# ---- S3 presigned links, checked against the server with no credentials -----------------------


def test_presigned_url_downloads_without_credentials(s3_settings):
    store = get_store(s3_settings)
    data = payload(4096, 3)
    store.put_bytes("jobs/ftjob-3/adapter.safetensors", data)
    before = datetime.now(UTC)
    url, expires_at = store.signed_url("jobs/ftjob-3/adapter.safetensors", 300, filename="요약-adapter.safetensors")
    assert before + timedelta(seconds=299) <= expires_at <= datetime.now(UTC) + timedelta(seconds=301)
    assert "X-Amz-Expires=300" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == data
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="-adapter.safetensors"')
    assert "filename*=UTF-8''%EC%9A%94%EC%95%BD-adapter.safetensors" in disposition


def test_presigned_url_for_public_endpoint_is_signed_for_that_host(s3_settings, s3_endpoint):
    """Clients reach MinIO by another name than the services do; the link must carry the public host."""
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = get_store(s3_settings.model_copy(update={"s3_public_endpoint_url": public}))
    store.put_bytes("k.txt", b"hello")
    url, _ = store.signed_url("k.txt", 60)
    assert url.startswith(public + "/")
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"hello"


def _verifying_s3_settings() -> Settings | None:
    env = {k: os.environ.get(f"TUNEFORGE_TEST_S3_{k.upper()}") for k in ("url", "endpoint_url", "access_key_id", "secret_access_key")}
    if not env["url"]:
        return None
    return Settings(
        artifacts_url=env["url"],
        s3_endpoint_url=env["endpoint_url"],
        s3_access_key_id=env["access_key_id"],
        s3_secret_access_key=env["secret_access_key"],
        secret_key=SIGNING_SECRET,
    )


@pytest.mark.skipif(
    _verifying_s3_settings() is None,
    reason="moto's server ignores presigned signatures and expiry (a tampered or expired link still gets 200); "
    "set TUNEFORGE_TEST_S3_URL=s3://bucket/prefix and TUNEFORGE_TEST_S3_{ENDPOINT_URL,ACCESS_KEY_ID,SECRET_ACCESS_KEY} "
    "to check refusal against MinIO or AWS",
)
def test_presigned_url_tampered_or_expired_is_refused_by_the_server():
    store = get_store(_verifying_s3_settings())
    key = f"test-presign/{uuid.uuid4().hex}"
    store.put_bytes(key, b"secret bytes")
    try:
        url, _ = store.signed_url(key, 2)
        assert httpx.get(url).status_code == 200
        head, sig = url.split("X-Amz-Signature=")
        tampered = head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]
        assert httpx.get(tampered).status_code == 403
        other_key = url.replace(key.split("/")[1], "x" + key.split("/")[1][1:])
        assert httpx.get(other_key).status_code == 403
        time.sleep(3)
        assert httpx.get(url).status_code == 403
    finally:
        store.delete(key)
