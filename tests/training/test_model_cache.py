"""The host's model cache against a local hub (a real HTTP server, no network): fetched once
across concurrent jobs, progress in bytes, the revision resolved to a commit, a clear offline
error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.training.errors import TrainingInputError
from core.training.model_cache import ModelNotCached, ensure_model
from tests.training.hub import LocalHub, write_repo

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/tokenizer.json": b"{}",
}
TOTAL = sum(len(v) for v in FILES.values())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token or config of the machine
    commit = write_repo(tmp_path / "hub", "acme/tiny-llama", FILES)
    server = LocalHub(tmp_path / "hub").start()
    server.commit = commit
    yield server
    server.stop()


def test_fetches_into_the_cache_reports_bytes_and_resolves_the_commit(hub, tmp_path):
    seen = []
    got = ensure_model("acme/tiny-llama", None, tmp_path / "cache", endpoint=hub.url,
                       progress=lambda done, total: seen.append((done, total)))
    assert got.commit == hub.commit and got.fetched_bytes == TOTAL
    assert got.path == (tmp_path / "cache" / "models--acme--tiny-llama" / "snapshots" / hub.commit).resolve()
    assert {p: (got.path / p).read_bytes() for p in FILES} == FILES
    assert seen[-1] == (TOTAL, TOTAL) and all(t == TOTAL for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(hub.downloads()) == len(FILES)

    again = ensure_model("acme/tiny-llama", "main", tmp_path / "cache", endpoint=hub.url)
    assert (again.path, again.commit, again.fetched_bytes) == (got.path, hub.commit, 0)
    assert len(hub.downloads()) == len(FILES)  # nothing fetched twice


def test_a_local_directory_is_used_as_is(tmp_path):
    got = ensure_model(str(tmp_path), None, tmp_path / "cache")
    assert (got.path, got.commit, got.fetched_bytes) == (tmp_path, None, 0)


FETCH = """
import json, sys, time
from pathlib import Path
from core.training.model_cache import ensure_model
url, cache, ready = sys.argv[1:4]
Path(ready).touch()  # imports done: start together, so the fetches would overlap without the lock
while not (Path(ready).parent / "go").exists():
    time.sleep(0.01)
t0 = time.time()
seen = []
got = ensure_model("acme/tiny-llama", None, cache, endpoint=url, progress=lambda d, t: seen.append((d, t)))
print(json.dumps({"commit": got.commit, "path": str(got.path), "fetched": got.fetched_bytes,
                  "last": seen[-1] if seen else None, "start": t0, "end": time.time()}))
"""


def test_two_jobs_on_one_host_fetch_once(hub, tmp_path):
    """The second process waits on the lock, then finds the snapshot complete: every file
    crosses the wire once, and none of its requests overlaps the first one's download."""
    hub.delay = 0.8  # per file body: the first fetch takes seconds, so the second arrives mid-way
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = tmp_path / "cache"
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", FETCH, hub.url, str(cache), str(gate / f"ready{i}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((gate / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "fetchers did not start"
        time.sleep(0.05)
    (gate / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert {r["commit"] for r in results} == {hub.commit}
    assert len({r["path"] for r in results}) == 1
    assert sorted(r["fetched"] for r in results) == [0, TOTAL]
    assert [r["last"] for r in results if r["fetched"]] == [[TOTAL, TOTAL]]
    downloads = hub.downloads()
    assert sorted(r.path.rsplit("/", 1)[-1] for r in downloads) == sorted(p.rsplit("/", 1)[-1] for p in FILES)
    by_pid = {}
    for r in hub.log:
        by_pid.setdefault(r.agent.rsplit("pid/", 1)[-1], []).append(r)
    assert len(by_pid) == 2, [r.agent for r in hub.log]
    first, second = sorted(by_pid.values(), key=lambda rs: min(r.start for r in rs))
    assert max(r.end for r in first) <= min(r.start for r in second)


def test_offline_and_not_cached_names_the_model_and_the_cache(hub, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotCached) as e:
        ensure_model("acme/tiny-llama", None, cache, offline=True)
    msg = str(e.value)
    assert "'acme/tiny-llama' (revision main) is not in the model cache" in msg
    assert str(cache.resolve()) in msg and "offline mode" in msg
    assert isinstance(e.value, TrainingInputError)  # the job fails with the message, not a traceback

    ensure_model("acme/tiny-llama", None, cache, endpoint=hub.url)
    hub.stop()  # the hub goes away: what is cached still loads, what is not says where it looked
    assert ensure_model("acme/tiny-llama", None, cache, endpoint=hub.url).commit == hub.commit
    assert ensure_model("acme/tiny-llama", None, cache, offline=True).commit == hub.commit
    with pytest.raises(ModelNotCached, match=r"'acme/other' .* cannot be reached \(.*refused"):
        ensure_model("acme/other", None, cache, endpoint=hub.url)
    hub.start()  # (the fixture stops it again)


def test_an_unknown_model_or_revision_is_a_clear_input_error(hub, tmp_path):
    with pytest.raises(TrainingInputError, match=r"model: cannot fetch 'acme/tiny-llama' \(revision v9\)"):
        ensure_model("acme/tiny-llama", "v9", tmp_path / "cache", endpoint=hub.url)
    with pytest.raises(TrainingInputError, match=r"model: cannot fetch 'acme/nothing' \(revision main\)"):
        ensure_model("acme/nothing", None, tmp_path / "cache", endpoint=hub.url)


# --- run() through the cache ------------------------------------------------------------------


@pytest.fixture
def tiny_hub(tmp_path, monkeypatch, tiny_model_dir):
    """The tiny test model served as the hub repository acme/tiny-llama."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    files = {p.name: p.read_bytes() for p in Path(tiny_model_dir).iterdir() if p.is_file()}
    commit = write_repo(tmp_path / "hub", "acme/tiny-llama", files)
    server = LocalHub(tmp_path / "hub").start()
    server.commit, server.total = commit, sum(len(v) for v in files.values())
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", str(tmp_path / "models"))
    yield server
    server.stop()


def test_a_hub_model_trains_from_the_host_cache_and_records_its_commit(tiny_hub, tmp_path, learn_file):
    from core.training.pipeline import run
    from tests.training.test_pipeline import RecordingReporter, learn_spec

    spec = learn_spec("acme/tiny-llama", learn_file, max_steps=1).model_copy(update={"validation_file": None})
    events = []
    rep = RecordingReporter()
    rep.event = lambda level, message, data=None: events.append((level, message, data))
    assert run(spec, tmp_path / "out", rep).status == "succeeded"
    downloading = [d for _, m, d in events if m.startswith("downloading model: ")]
    assert downloading and downloading[-1] == {"model": "acme/tiny-llama", "bytes_done": tiny_hub.total,
                                               "bytes_total": tiny_hub.total}
    assert len(downloading) <= 21  # throttled: at most one per 5% (or 2 s), plus the last
    recorded = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert recorded["model_commit"] == tiny_hub.commit
    snapshot = tmp_path / "models" / "models--acme--tiny-llama" / "snapshots" / tiny_hub.commit
    assert (snapshot / "model.safetensors").is_file()
    assert len(tiny_hub.downloads()) == len(list(snapshot.iterdir()))  # each file fetched once


def test_a_model_neither_cached_nor_reachable_fails_the_run_naming_model_and_cache(tiny_hub, tmp_path, learn_file):
    from core.training.pipeline import run
    from tests.training.test_pipeline import learn_spec

    tiny_hub.stop()  # the hub is unreachable, and this cache is empty
    spec = learn_spec("acme/tiny-llama", learn_file, max_steps=1)
    with pytest.raises(ModelNotCached, match=rf"'acme/tiny-llama' \(revision main\) is not in the model cache "
                                             rf"{tmp_path / 'models'} and the hub \({tiny_hub.url}\) cannot be reached"):
        run(spec, tmp_path / "out")
    tiny_hub.start()  # (the fixture stops it again)


def test_download_progress_events_are_throttled():
    from core.training.model_cache import progress_events

    now = [0.0]
    seen = []
    report = progress_events(lambda level, message, data: seen.append(message), "m", clock=lambda: now[0])
    for done in range(0, 1001, 10):  # 101 updates of 1%, 0.01 s apart
        report(done, 1000)
        now[0] += 0.01
    report(1000, 1000)  # a repeated last update adds nothing
    assert seen[0] == "downloading model: 0 bytes of 1000 bytes" and seen[-1] == "downloading model: 1000 bytes of 1000 bytes"
    assert len(seen) == 21  # every 5%
    now[0] += 10
    progress_events(lambda *a: seen.append(a[1]), "m", clock=lambda: now[0])(3 * 1024**3, 16 * 1024**3)
    assert seen[-1] == "downloading model: 3.0 GiB of 16.0 GiB"
