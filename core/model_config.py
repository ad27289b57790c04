"""A model's `config.json` as a dict, for the control plane's fit planning (core.services.fit).

The API and the scheduler plan a job's GPU memory from the architecture alone
(`core.memory_plan.shape_from_config_dict`), so all they need of the model is this one small
file: read from a local model directory, or fetched from the hub (`hf_hub_download` into the
host's model cache, so a worker on the same host finds it there later).

Why it never raises: planning is advice ahead of time. A hub that cannot be reached (offline
with `HF_HUB_OFFLINE=1`, no network, a slow mirror behind `HF_ENDPOINT`), a gated or missing
repository, a directory without `config.json`: each gives `None` and a reason, the job's plan
is then "unknown", the worker plans at attempt start from the model it loads, and the
out-of-memory retry covers what is left. A create request is never failed or held long by
the hub: the lookup has a short timeout, and its answer (found or not) is kept in-process so
a burst of creates of one model asks once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Seconds the hub may take to answer the metadata request (huggingface_hub's `etag_timeout`).
HUB_TIMEOUT_SECONDS = 5.0
#: How long a failed hub lookup is remembered: a hub that was down is asked again after this.
MISS_TTL_SECONDS = 300.0
#: A config.json larger than this is not a model config (the planner reads a handful of keys).
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelConfig:
    """`config` is the parsed file, or None with `reason` saying why it could not be read."""

    config: dict | None
    reason: str | None = None


_cache: dict[tuple, tuple[float, ModelConfig]] = {}
_locks: dict[tuple, threading.Lock] = {}
_guard = threading.Lock()


def is_local(model: str) -> bool:
    """A path-like model names a local directory (checked against the model roots by
    core.services.jobs.check_model); anything else is a hub id."""
    return model.startswith(("/", "~", ".")) or "\\" in model or model.startswith("file:")


def model_config(
    model: str, revision: str | None = None, *, cache_dir: str | Path | None = None, endpoint: str | None = None
) -> ModelConfig:
    """The model's config.json (see the module doc: never raises, remembers its answers).
    `endpoint=None` follows huggingface_hub (HF_ENDPOINT)."""
    if is_local(model):
        path = Path(model.removeprefix("file://")).expanduser() / "config.json"
        try:
            key = ("local", str(path), path.stat().st_mtime_ns)
        except (OSError, RuntimeError, ValueError):
            return ModelConfig(None, f"{model} has no config.json")
        return _remembered(key, lambda: _read(path, model), ttl=None)
    key = ("hub", model, revision or "main", str(cache_dir or ""), endpoint)
    return _remembered(key, lambda: _from_hub(model, revision, cache_dir, endpoint), ttl=MISS_TTL_SECONDS)


def clear_cache() -> None:
    with _guard:
        _cache.clear()


def _remembered(key: tuple, load, ttl: float | None) -> ModelConfig:
    """One lookup per key at a time (concurrent creates of one model wait for the first);
    a found config is kept for the process's life, a miss for `ttl` seconds."""
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _cache.get(key)
        if hit is not None and (hit[1].config is not None or ttl is None or time.monotonic() - hit[0] < ttl):
            return hit[1]
        found = load()
        with _guard:
            _cache[key] = (time.monotonic(), found)
        return found


def _read(path: Path, model: str) -> ModelConfig:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return ModelConfig(None, f"{model}: config.json is larger than {MAX_CONFIG_BYTES} bytes")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return ModelConfig(None, f"{model}: config.json could not be read ({type(e).__name__})")
    if not isinstance(config, dict):
        return ModelConfig(None, f"{model}: config.json is not a JSON object")
    return ModelConfig(config)


def _from_hub(model: str, revision: str | None, cache_dir: str | Path | None, endpoint: str | None) -> ModelConfig:
    """`hf_hub_download` honours HF_HUB_OFFLINE (answers from the cache only), HF_ENDPOINT and
    HF_TOKEN; any failure is a reason, not an error.

    One HEAD request without retries comes first: when nothing is cached, `hf_hub_download`
    itself retries a network error for up to a minute (measured: 24 s against a host that does
    not resolve), far too long for a create request. A hub that does not answer that HEAD is
    treated as offline: the cached copy if there is one, else no config."""
    unreachable: Exception | None = None
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError

        offline = constants.HF_HUB_OFFLINE
        if not offline:
            try:
                get_hf_file_metadata(hf_hub_url(model, "config.json", revision=revision, endpoint=endpoint),
                                     timeout=HUB_TIMEOUT_SECONDS, endpoint=endpoint, retry_on_errors=False)
            except HfHubHTTPError:
                pass  # the hub answered (missing, gated, ...): hf_hub_download raises the precise error
            except Exception as e:  # unreachable or too slow
                unreachable, offline = e, True
        path = hf_hub_download(
            model, "config.json", revision=revision, cache_dir=str(cache_dir) if cache_dir else None,
            etag_timeout=HUB_TIMEOUT_SECONDS, endpoint=endpoint, local_files_only=offline,
        )
    except Exception as e:  # offline, unreachable, missing, gated: the plan is unknown, never a 500
        if unreachable is not None:
            return ModelConfig(None, f"the hub did not answer ({_brief(unreachable)}) and config.json of {model} is not cached")
        return ModelConfig(None, f"config.json of {model} could not be fetched from the hub ({_brief(e)})")
    return _read(Path(path), model)


def _brief(e: Exception) -> str:
    text = str(e).strip()
    return type(e).__name__ + (": " + text.splitlines()[0][:200] if text else "")
