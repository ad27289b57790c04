"""Fault injection against real processes: each test gets a pool of its own (database,
queue, dirs; tests/stacks.Pool), starts the workers it needs and stops all of them, and
runs with leases, heartbeats and dispatch timeouts of seconds (tests/stacks.FAST)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jobdata import tiny_model
from tests.stacks import Pool, own_pool


@pytest.fixture
def pool(settings_env, stack_dir, tmp_path) -> Iterator[Pool]:
    with own_pool(settings_env, tmp_path, tiny_model(stack_dir / "models"), "faults") as p:
        yield p


def assert_contiguous(pool: Pool, job_id: str, total: int) -> None:
    steps = pool.metric_steps(job_id)
    assert steps == list(range(1, total + 1)), f"metric steps {steps}"
