"""A real S3-compatible server for the S3 store: moto's standalone server, one per test session.

It runs as its own process on a free port and is reached over HTTP exactly as MinIO would be,
so the S3 code path (signing, multipart, pagination, presigned GETs) is exercised for real.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from core.config import Settings

ACCESS_KEY = "AKIATUNEFORGETEST"
SECRET_KEY = "tuneforge-test-secret-access-key-0123456789"
SIGNING_SECRET = "test-signing-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_until_up(proc, url, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_until_up(proc: subprocess.Popen, url: str, log_path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}; see {log_path}")
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer on {url} within 30 s; see {log_path}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint) -> str:
    import boto3

    bucket = f"tuneforge-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_settings(s3_endpoint, s3_bucket) -> Settings:
    """A fresh prefix per test, so tests never see each other's objects."""
    return Settings(
        artifacts_url=f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        secret_key=SIGNING_SECRET,
    )


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    return Settings(
        artifacts_url=f"file://{tmp_path / 'artifacts'}",
        public_url="http://tuneforge.test",
        secret_key=SIGNING_SECRET,
    )
