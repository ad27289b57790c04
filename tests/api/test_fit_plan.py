"""Fit planning in the control plane (issue 12): the plan stored at create, the refusal of a
job no GPU worker of the pool can hold, the plan and time estimate of a dry run, the measured
throughput written at success, and config.json from a local directory or the hub.

Service tests run on the session's PostgreSQL (rolled back per test) with real worker rows;
the HTTP tests go through the live API of the shared stack."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core import model_config as mc
from core.config import Settings
from core.errors import InvalidRequest
from core.jobrequest import JobCreateRequest
from core.memory_plan import GiB, estimate, shape_from_config_dict
from core.models import File, Job, JobEvent, Team, Worker, utcnow
from core.services import fit, jobs, runs
from core.spec import JobSpec
from tests.training.hub import LocalHub, write_repo

#: Llama-3-8B's shape (the issue's reference case), as its config.json says it.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_layer": 12, "vocab_size": 50257}
RTX_4090, H100 = "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"
TEMPLATE = {"prompt": "{document}", "completion": "{summary}"}


def model_dir(root: Path, name: str, config: dict | None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def settings(root) -> Settings:
    return Settings(secret_key="x" * 32, model_roots=[root])


@pytest.fixture
def team_file(db_session) -> tuple[str, str]:
    return make_team_file(db_session)


def make_team_file(s: Session) -> tuple[str, str]:
    """A team with an uploaded file, in a pool of only the workers the test adds: any worker
    row another test left in the database is set inactive (rolled back with the test)."""
    s.execute(update(Worker).values(active=False))
    team = Team(name=f"fit-{secrets.token_hex(3)}")
    s.add(team)
    s.flush()
    f = File(team_id=team.id, filename="d.jsonl", bytes=1, sha256="0" * 64, storage_key="files/x.jsonl",
             format="jsonl", row_count=100, columns=["document", "summary"])
    s.add(f)
    s.flush()
    return team.id, f.id


def gpu_worker(s: Session, wid: str, memory_gb: float, name: str = RTX_4090, gpus: int = 1, **kw) -> Worker:
    w = Worker(id=wid, hostname="h", slots=1, gpus=gpus, gpu_name=name if gpus else None,
               gpu_memory_gb=memory_gb if gpus else None, last_heartbeat=utcnow(), **kw)
    s.add(w)
    s.flush()
    return w


def create(s: Session, settings: Settings, team_file, model: Path, **body) -> Job:
    team_id, file_id = team_file
    request = JobCreateRequest(model=str(model), training_file=file_id, **{"template": TEMPLATE, **body})
    job, created = jobs.create_job(s, settings, team_id, request)
    assert created
    return job


def needed_gib(config: dict, spec: JobSpec, checkpointing: bool = True) -> float:
    """What one GPU needs at one row per micro-batch, straight from the memory model."""
    est = estimate(shape_from_config_dict(config), fit.training_setup(spec), micro_batch_size=1,
                   max_seq_length=spec.hyperparameters.max_seq_length, gradient_checkpointing=checkpointing)
    return est.required / GiB


# --- create ------------------------------------------------------------------------------------


def test_create_refuses_a_job_that_fits_no_gpu_worker_with_the_numbers(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-4090", 24.0)
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    with pytest.raises(InvalidRequest) as refused:
        create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": 16384})
    e = refused.value
    assert e.code == "does_not_fit" and e.param == "hyperparameters.max_seq_length"
    spec = JobSpec(model=str(model), training_file="f", hyperparameters={"max_seq_length": 16384})
    need = needed_gib(LLAMA3_8B, spec)
    assert need > 24
    assert f"needs ~{need:.1f} GiB per GPU at max_seq_length 16384" in e.message
    assert f"the largest worker GPU ({RTX_4090}) has 24.0 GiB" in e.message
    assert "lower max_seq_length to" in e.message
    # The length it proposes does fit.
    fitting = int(e.message.split("lower max_seq_length to ")[1].split()[0])
    job = create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": fitting})
    assert job.plan["gpus"][0]["fits"] and job.planned_gpu_memory_gb <= 24.0


def test_create_stores_the_plan_and_the_memory_one_gpu_needs(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-4090", 24.0)
    gpu_worker(db_session, "fit-h100", 79.6, name=H100)
    gpu_worker(db_session, "fit-dead", 40.0, name="old", active=False)  # not live: not a kind
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    job = create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": 2048})
    spec = JobSpec.model_validate(job.spec)
    assert job.planned_gpu_memory_gb == pytest.approx(needed_gib(LLAMA3_8B, spec), abs=0.01)
    assert job.min_gpu_memory_gb is None  # the client's own figure stays apart
    [queued] = db_session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)).all()
    assert queued.message == f"Files validated; job queued (fit plan: needs ~{job.planned_gpu_memory_gb:.1f} GiB per GPU)"
    plan = job.plan
    assert plan["status"] == "planned" and plan["model_type"] == "llama" and plan["max_seq_length"] == 2048
    assert plan["needed_gpu_memory_gb"] == job.planned_gpu_memory_gb
    h100, rtx = plan["gpus"]  # largest first, one entry per kind
    assert (h100["gpu_name"], rtx["gpu_name"]) == (H100, RTX_4090) and h100["fits"] and rtx["fits"]
    for kind in (h100, rtx):  # the effective batch is what the job asked for, whatever fits
        assert kind["micro_batch_size"] * kind["gradient_accumulation_steps"] == spec.hyperparameters.rows_per_gpu_step
        assert kind["micro_batch_tokens"] == kind["micro_batch_size"] * 2048
        assert kind["predicted_peak_gb"] < kind["required_gb"] <= kind["gpu_memory_gb"]
    # The smaller card runs a smaller micro-batch or turns checkpointing on.
    assert rtx["micro_batch_size"] < h100["micro_batch_size"] or rtx["gradient_checkpointing"] > h100["gradient_checkpointing"]


def test_checkpointing_turned_off_needs_more_and_says_how_to_fit(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-4090", 24.0)
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    hp = {"max_seq_length": 4096, "gradient_checkpointing": False}
    spec = JobSpec(model=str(model), training_file="f", hyperparameters=hp)
    assert needed_gib(LLAMA3_8B, spec, checkpointing=False) > 24 > needed_gib(LLAMA3_8B, spec, checkpointing=True)
    with pytest.raises(InvalidRequest) as refused:
        create(db_session, settings, team_file, model, hyperparameters=hp)
    assert 'set gradient_checkpointing to true or "auto"' in refused.value.message


def test_the_clients_min_gpu_memory_rules_kinds_out(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-4090", 24.0)
    gpu_worker(db_session, "fit-h100", 79.6, name=H100)
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    job = create(db_session, settings, team_file, model, resources={"gpus": 1, "min_gpu_memory_gb": 40})
    assert [k["gpu_name"] for k in job.plan["gpus"]] == [H100]
    assert job.min_gpu_memory_gb == 40 and job.planned_gpu_memory_gb < 40


def test_a_cpu_pool_never_refuses_on_memory(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-cpu", 0, gpus=0)
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    job = create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": 16384})
    assert job.status == "queued" and job.plan["status"] == "planned" and job.plan["gpus"] == []
    assert job.planned_gpu_memory_gb > 24  # kept for when GPU workers join: placement uses it


def test_too_few_gpus_in_the_pool_is_no_memory_refusal(db_session, settings, root, team_file):
    gpu_worker(db_session, "fit-4090", 24.0)  # one GPU; the job asks for two
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    job = create(db_session, settings, team_file, model, resources={"gpus": 2}, hyperparameters={"max_seq_length": 16384})
    assert job.plan["gpus"] == [] and job.planned_gpu_memory_gb > 24


@pytest.mark.parametrize(
    ("config", "body", "reason"),
    [
        (GPT2, {}, "model_type 'gpt2'"),
        (None, {}, "has no config.json"),
        (LLAMA3_8B, {"resources": {"gpus": 0}}, "CPU slot"),
    ],
)
def test_unknown_or_not_applicable_plans_never_refuse(db_session, settings, root, team_file, config, body, reason):
    gpu_worker(db_session, "fit-small", 8.0)
    model = model_dir(root, f"m-{secrets.token_hex(3)}", config)
    team_id, file_id = team_file
    request = JobCreateRequest(model=str(model), training_file=file_id, **{"template": TEMPLATE, **body})
    job, _ = jobs.create_job(db_session, settings, team_id, request)
    assert job.plan["status"] in ("unknown", "not_applicable") and reason in job.plan["reason"]
    assert job.planned_gpu_memory_gb is None


def test_a_dpo_job_is_planned_by_whole_pairs(db_session, settings, root, team_file):
    """A pair is a chosen and a rejected row in one forward: the memory of two rows."""
    gpu_worker(db_session, "fit-4090", 24.0)
    model = model_dir(root, "llama-8b-dpo", LLAMA3_8B)
    db_session.get(File, team_file[1]).columns = ["input", "preferred_output", "non_preferred_output"]
    dpo = {"method": {"type": "dpo"}, "template": {}}
    job = create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": 2048}, **dpo)
    spec = JobSpec.model_validate(job.spec)
    pair = estimate(shape_from_config_dict(LLAMA3_8B), fit.training_setup(spec), micro_batch_size=2,
                    max_seq_length=2048, gradient_checkpointing=True)
    assert job.plan["status"] == "planned" and job.planned_gpu_memory_gb == pytest.approx(pair.required / GiB, abs=0.01)
    (kind,) = job.plan["gpus"]
    assert kind["fits"] and kind["micro_batch_size"] * kind["gradient_accumulation_steps"] == 4  # pairs
    assert kind["micro_batch_tokens"] == kind["micro_batch_size"] * 2 * 2048
    with pytest.raises(InvalidRequest) as refused:  # one pair at 4096 is more than 24 GiB
        create(db_session, settings, team_file, model, hyperparameters={"max_seq_length": 4096}, **dpo)
    assert refused.value.code == "does_not_fit" and "max_seq_length 4096" in str(refused.value)


# --- throughput and the dry run's plan ---------------------------------------------------------


def test_success_records_gpu_kind_and_throughput_and_validate_estimates_time(db_session, settings, root, team_file):
    s = db_session
    gpu_worker(s, "fit-4090", 24.0)
    model = model_dir(root, "llama-8b", LLAMA3_8B)
    job = create(s, settings, team_file, model, hyperparameters={"max_seq_length": 1024})
    spec = JobSpec.model_validate(job.spec)
    claim = runs.claim_job(s, job.id, "fit-4090", 60)
    for step, tps in ((1, 1000.0), (2, 3000.0)):
        runs.record_metrics(s, job.id, claim.attempt, step, {"loss": 1.0, "tokens_per_second": tps})
    runs.record_metrics(s, job.id, claim.attempt, 3, {"eval_loss": 1.0})  # no throughput in an eval point
    runs.finish(s, job.id, claim.attempt, "succeeded")
    s.refresh(job)
    assert (job.gpu_name, job.tokens_per_second) == (RTX_4090, 2000.0)

    # The dry run of the same model now estimates the time on that GPU kind (none on the H100).
    gpu_worker(s, "fit-h100", 79.6, name=H100)
    again = fit.plan_job(s, settings, spec)
    counts = {"trained_tokens": 50_000, "train_tokens": {"total_tokens": 25_000}, "estimated_steps": 12}
    report = fit.validation_plan(s, spec, again, counts)
    assert report["total_tokens"] == 50_000 and report["optimizer_steps"] == 12 and report["train_tokens"] == 25_000
    h100, rtx = report["gpus"]
    assert rtx["gpu_name"] == RTX_4090 and rtx["estimated_seconds"] == 25.0 and "estimate_reason" not in rtx
    assert h100["estimated_seconds"] is None and H100 in h100["estimate_reason"]
    # Without token counts (no worker answered) there is a plan but no estimate.
    blind = fit.validation_plan(s, spec, again, None)
    assert blind["total_tokens"] is None and blind["gpus"][1]["estimated_seconds"] is None


def test_a_cpu_run_records_throughput_without_a_gpu_name(any_db, settings, root):
    s = any_db  # the embedded mode's SQLite too: the mean is read from the JSON metric points
    gpu_worker(s, "fit-cpu", 0, gpus=0)
    job = create(s, settings, make_team_file(s), model_dir(root, "tiny", None))
    claim = runs.claim_job(s, job.id, "fit-cpu", 60)
    runs.record_metrics(s, job.id, claim.attempt, 1, {"loss": 1.0, "tokens_per_second": 120.5})
    runs.finish(s, job.id, claim.attempt, "succeeded")
    s.refresh(job)
    assert job.gpu_name is None and job.tokens_per_second == 120.5


def test_dry_run_counts_the_tokens_the_run_will_process(tmp_path):
    from core.training.dry_run import dry_run, estimated_steps
    from tests.jobdata import TEMPLATE as NEWS_TEMPLATE, jsonl, news_rows, tiny_model

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(news_rows(8, 200)))
    spec = JobSpec(model=str(tiny_model(tmp_path)), training_file=str(data), template=NEWS_TEMPLATE,
                   hyperparameters={"n_epochs": 3, "batch_size": 2, "max_seq_length": 256})
    r = dry_run(spec)
    total = r["train_tokens"]["total_tokens"]
    assert r["trained_tokens"] == 3 * total and r["estimated_steps"] == 12
    assert r["labelled_fraction"] == pytest.approx(r["train_tokens"]["completion_tokens"] / total, abs=1e-4)
    assert 0 < r["labelled_fraction"] < 1
    capped = spec.model_copy(update={"hyperparameters": spec.hyperparameters.model_copy(update={"max_steps": 6})})
    assert dry_run(capped)["trained_tokens"] == round(3 * total * 6 / 12)
    two_gpus = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 2})})
    assert estimated_steps(two_gpus, 8) == 6  # 2 GPUs x 2 rows per step


# --- config.json -------------------------------------------------------------------------------


def test_config_from_a_local_directory_is_reread_when_it_changes(tmp_path):
    d = model_dir(tmp_path, "m", LLAMA3_8B)
    assert mc.model_config(str(d)).config == LLAMA3_8B
    (d / "config.json").write_text(json.dumps({**LLAMA3_8B, "num_hidden_layers": 2}))
    os.utime(d / "config.json", ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert mc.model_config(str(d)).config["num_hidden_layers"] == 2
    (d / "config.json").write_text("[1, 2]")
    os.utime(d / "config.json", ns=(2, 2))
    assert mc.model_config(str(d)).reason.endswith("is not a JSON object")


def test_config_from_the_hub_and_an_unreachable_hub(tmp_path):
    mc.clear_cache()
    hub = LocalHub(tmp_path / "hub").start()
    try:
        write_repo(hub.root, "acme/llama-8b", {"config.json": json.dumps(LLAMA3_8B).encode()})
        got = mc.model_config("acme/llama-8b", None, cache_dir=tmp_path / "cache", endpoint=hub.url)
        assert got.config == LLAMA3_8B
        assert list((tmp_path / "cache").glob("models--acme--llama-8b/snapshots/*/config.json"))  # in the host's cache
        n = len(hub.log)
        assert mc.model_config("acme/llama-8b", None, cache_dir=tmp_path / "cache", endpoint=hub.url).config == LLAMA3_8B
        assert len(hub.log) == n  # remembered in-process
        missing = mc.model_config("acme/nothing", None, cache_dir=tmp_path / "cache", endpoint=hub.url)
        assert missing.config is None and "acme/nothing" in missing.reason
    finally:
        hub.stop()
    # The hub is gone: answered at once (one HEAD, no retries) from the host's cache, or None.
    mc.clear_cache()
    started = time.monotonic()
    assert mc.model_config("acme/llama-8b", None, cache_dir=tmp_path / "cache", endpoint=hub.url).config == LLAMA3_8B
    gone = mc.model_config("acme/other", "main", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert gone.config is None and "the hub did not answer" in gone.reason and "acme/other is not cached" in gone.reason
    assert time.monotonic() - started < mc.HUB_TIMEOUT_SECONDS


# --- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def stack_gpu_worker(stack_engine):
    """A live 24 GB GPU worker row in the shared stack's pool, removed after the test. It has
    no slots, so no scheduler running in the stack ever hands it a job."""
    wid = f"fit-stack-{secrets.token_hex(3)}:1"
    with Session(stack_engine) as s:
        s.add(Worker(id=wid, hostname="fit", slots=0, gpus=1, gpu_name=RTX_4090, gpu_memory_gb=24.0,
                     last_heartbeat=utcnow() + timedelta(hours=1)))
        s.commit()
    yield wid
    with Session(stack_engine) as s:
        s.execute(delete(Worker).where(Worker.id == wid))
        s.commit()


def test_create_and_validate_refuse_over_http_and_validate_shows_the_plan(api, stack_dir, stack_gpu_worker):
    """Other tests may leave live GPU workers in the shared pool, so the refused length is
    one no GPU holds (the exact numbers are checked on the service above)."""
    model = model_dir(stack_dir / "models", "llama-8b-shape", LLAMA3_8B)
    too_long = {"hyperparameters": {"max_seq_length": 131072}}
    for r in (api.job(str(model), **too_long),
              api.http.post("/v1/fine_tuning/jobs/validate",
                            json={"model": str(model), "training_file": api.file_id(), "template": TEMPLATE, **too_long})):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "does_not_fit" and err["param"] == "hyperparameters.max_seq_length"
        assert "GiB per GPU at max_seq_length 131072; the largest worker GPU" in err["message"]
        assert "lower max_seq_length to" in err["message"]
    fits = {"hyperparameters": {"max_seq_length": 1024}, "resources": {"gpus": 1, "min_gpu_memory_gb": 1}}
    r = api.http.post("/v1/fine_tuning/jobs/validate", json={
        "model": str(model), "training_file": api.file_id(), "template": TEMPLATE, **fits})
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert plan["status"] == "planned" and plan["needed_gpu_memory_gb"] < 24
    [kind] = [k for k in plan["gpus"] if k["gpu_name"] == RTX_4090]
    assert kind["fits"] and kind["micro_batch_size"] >= 1 and kind["estimated_seconds"] is None
    # min_gpu_memory_gb keeps the job off the stack's CPU worker: it has no weights to train.
    created = api.job(str(model), **fits)
    assert created.status_code == 200, created.text
    assert created.json()["plan"]["needed_gpu_memory_gb"] == plan["needed_gpu_memory_gb"]
