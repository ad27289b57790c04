"""A worker that is stopped (deploy, Ctrl-C) hands its running job back: the training
process is killed, the job is re-queued, and the scheduler gives it to the next worker,
which resumes it from the newest checkpoint as attempt 2."""

from __future__ import annotations

from tests.e2e.conftest import TERMINAL, training_processes
from tests.stacks import own_pool, stop_process


def test_stopped_worker_requeues_and_next_worker_resumes(settings_env, e2e_model, tmp_path):
    # A pool of its own: the session's e2e worker must not pick the re-queued job up.
    with own_pool(settings_env, tmp_path, e2e_model, "stop") as pool:
        job_id = pool.job(pool.team(), max_steps=12, every=2, accumulate=8)
        with pool.worker() as first:
            pool.wait(lambda: (pool.row(job_id).step or 0) >= 3, "training past the first checkpoint")
            stop_process(first)
        assert training_processes(job_id) == []
        job = pool.row(job_id)
        assert (job.status, job.attempt, job.worker_id) == ("queued", 1, None)
        assert any(m.startswith("Worker stopped; job re-queued") for m in pool.messages(job_id))

        with pool.worker():
            job = pool.wait_status(job_id, TERMINAL)
        assert job.status == "succeeded" and job.attempt == 2, job.error
        resumed = [e for e in pool.events(job_id) if e.message.startswith("Resuming from")]
        assert resumed and resumed[0].attempt == 2
