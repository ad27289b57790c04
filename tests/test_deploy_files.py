"""The deployment files stay in step with the code: compose is valid and sets only real settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED_ENV = {"TUNEFORGE_SECRET_KEY": "x" * 32, "MINIO_ROOT_PASSWORD": "y" * 16, "MINIO_SERVICE_PASSWORD": "z" * 16}


def compose_command() -> list[str] | None:
    """`docker compose` (plugin) or a standalone `docker-compose` v2; None when neither runs."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        if subprocess.run([*cmd, "version"], capture_output=True, check=False).returncode == 0:
            return cmd
    return None


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]  # safe_load resolves anchors and `<<` merges


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return env


def test_compose_config_is_valid():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no docker compose client on this machine")
    run = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False,
                         env={**os.environ, **REQUIRED_ENV})
    assert run.returncode == 0, run.stderr
    # The signing secret is required, never defaulted: without it compose refuses to render.
    env = {k: v for k, v in os.environ.items() if k != "TUNEFORGE_SECRET_KEY"} | {
        "MINIO_ROOT_PASSWORD": "y" * 16, "MINIO_SERVICE_PASSWORD": "z" * 16}
    run = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert run.returncode != 0 and "TUNEFORGE_SECRET_KEY" in run.stderr


def test_every_tuneforge_variable_is_a_setting():
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in services().items():
        for var in env_of(service):
            if var.startswith("TUNEFORGE_"):
                seen.add(var)
                assert var.removeprefix("TUNEFORGE_").lower() in fields, f"{name}: {var} is not a Settings field"
    assert {"TUNEFORGE_DATABASE_URL", "TUNEFORGE_BROKER_URL", "TUNEFORGE_ARTIFACTS_URL", "TUNEFORGE_SECRET_KEY"} <= seen


def test_services_share_one_configuration():
    """api, worker and migrate must agree on where the database, broker and artifacts are."""
    svc = services()
    shared = ("TUNEFORGE_DATABASE_URL", "TUNEFORGE_BROKER_URL", "TUNEFORGE_ARTIFACTS_URL", "TUNEFORGE_SECRET_KEY")
    views = {name: {k: env_of(svc[name]).get(k) for k in shared} for name in ("api", "worker", "migrate")}
    assert views["api"] == views["worker"] == views["migrate"]
    assert svc["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("api", "worker"):
        assert svc[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_gpu_image_installs_cuda_torch_before_the_project():
    text = (ROOT / "Dockerfile.gpu").read_text()
    torch_at = text.find("download.pytorch.org/whl/cu")
    project_at = re.search(r"^RUN pip install \"?\.", text, re.MULTILINE)  # the project, with or without an extra
    assert torch_at != -1 and project_at and torch_at < project_at.start()
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["tuneforge"\]', text, re.MULTILINE)


def test_services_use_a_bucket_scoped_minio_user_not_root():
    """The MinIO root credentials reach only minio and minio-init; api, worker and migrate
    get the service user, whose policy covers the tuneforge bucket and nothing else."""
    import json

    svc = services()
    for name, service in svc.items():
        env = env_of(service)
        if name not in ("minio", "minio-init"):
            assert not any("MINIO_ROOT" in f"{k}={v}" for k, v in env.items()), name
    for name in ("api", "worker", "migrate"):
        env = env_of(svc[name])
        assert env["TUNEFORGE_S3_ACCESS_KEY_ID"] == "${MINIO_SERVICE_USER:-tuneforge-service}"
        assert env["TUNEFORGE_S3_SECRET_ACCESS_KEY"].startswith("${MINIO_SERVICE_PASSWORD:?")
    init = svc["minio-init"]
    policy = json.loads(env_of(init)["BUCKET_POLICY"])
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert resources == {"arn:aws:s3:::tuneforge", "arn:aws:s3:::tuneforge/*"}
    assert all(a.startswith("s3:") and "*" not in a for a in actions) and "s3:DeleteBucket" not in actions
    script = init["command"][0]
    assert "mc admin user add" in script and "mc admin policy attach local tuneforge-bucket" in script


# --- the serving handoff: profile "serve" (vLLM + adapter-sync) ------------------------------


def _mounts(service: dict) -> dict[str, str]:
    """volume name -> mount point inside the container."""
    out = {}
    for v in service.get("volumes") or []:
        source, target = v.split(":")[:2]
        out[source] = target
    return out


def test_serve_profile_is_valid_compose():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no docker compose client on this machine")
    run = subprocess.run([*cmd, "-f", str(COMPOSE), "--profile", "serve", "config", "-q"], cwd=ROOT, capture_output=True,
                         text=True, check=False, env={**os.environ, **REQUIRED_ENV})
    assert run.returncode == 0, run.stderr


def test_serve_profile_loads_adapters_at_run_time_from_the_synced_volume():
    svc = services()
    serve, sync = svc["serve"], svc["adapter-sync"]
    assert serve["profiles"] == ["serve"] and sync["profiles"] == ["serve"]
    assert not any("serve" in (s.get("profiles") or []) for name, s in svc.items() if name not in ("serve", "adapter-sync"))
    assert serve["image"].startswith("vllm/vllm-openai:") and not serve["image"].endswith(":latest")
    assert "--enable-lora" in serve["command"]
    env = env_of(serve)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].lower() in ("true", "1")
    assert "lora_filesystem_resolver" in env["VLLM_PLUGINS"].split(",")
    # vLLM reads the very directory adapter-sync writes: the same volume, at the resolver's path.
    volume = next(v for v, target in _mounts(serve).items() if target == env["VLLM_LORA_RESOLVER_CACHE_DIR"])
    assert _mounts(sync)[volume] == sync["command"][1]
    # The resolver only loads adapters whose base equals the model vLLM serves: both name the same one.
    base = serve["command"][serve["command"].index("--model") + 1]
    assert sync["command"][sync["command"].index("--served-base") + 1] == base
    # adapter-sync reads the same database and artifact store as the API.
    shared = ("TUNEFORGE_DATABASE_URL", "TUNEFORGE_ARTIFACTS_URL", "TUNEFORGE_S3_ENDPOINT_URL")
    assert {k: env_of(sync)[k] for k in shared} == {k: env_of(svc["api"])[k] for k in shared}


def test_adapter_sync_writes_where_its_non_root_user_may():
    """A new named volume takes the ownership of the image directory it is mounted on; a
    path the image lacks would be root's, and the sync (user tuneforge) could not write."""
    target = _mounts(services()["adapter-sync"])["adapters"]
    assert re.search(rf"install -d -o tuneforge -g tuneforge {re.escape(target)}\b", (ROOT / "Dockerfile").read_text())


def test_adapter_sync_runs_a_real_command_with_real_options():
    import typer.main

    from core.cli import app

    sync = services()["adapter-sync"]["command"]
    command = typer.main.get_command(app).commands[sync[0]]
    options = {opt for p in command.params for opt in p.opts}
    assert {a for a in sync if a.startswith("--")} <= options
