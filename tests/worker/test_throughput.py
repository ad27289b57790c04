"""A real run on the tiny model records what later dry runs estimate time from (issue 12):
the GPU kind of the worker that ran it and the job's measured training tokens/s."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.models import Job, Metric, Worker, utcnow
from worker import runner

WORKER = "fit-throughput-host:1"


def test_success_records_the_workers_gpu_kind_and_the_runs_tokens_per_second(engine, wsettings, store, make_job):
    with Session(engine) as s:  # the row a worker registers (worker/app.py): a GPU host by its inventory
        s.add(Worker(id=WORKER, hostname="fit", slots=1, gpus=1, gpu_name="NVIDIA L4", gpu_memory_gb=22.0,
                     last_heartbeat=utcnow()))
        s.commit()
    try:
        job_id = make_job(max_steps=2, every=2)
        assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "succeeded"
        with Session(engine) as s:
            job = s.get(Job, job_id)
            logged = [m.values["tokens_per_second"] for m in s.scalars(select(Metric).where(Metric.job_id == job_id))
                      if "tokens_per_second" in m.values]
            assert logged and all(v > 0 for v in logged)
            assert job.gpu_name == "NVIDIA L4"
            assert abs(job.tokens_per_second - sum(logged) / len(logged)) < 1e-6 * job.tokens_per_second
    finally:
        with Session(engine) as s:
            s.execute(delete(Worker).where(Worker.id == WORKER))
            s.commit()
