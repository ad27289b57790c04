"""Where a run's metrics go besides our store: TensorBoard event files in every job's output
folder, and W&B runs for `integrations` (W&B's offline mode, read back from its run files).

One short run on the tiny model (4 steps) carries both; the assertions read what the real
writers wrote, with readers of their own formats, and compare it with our metrics.jsonl.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from core.spec import JobSpec
from core.training.integrations import TENSORBOARD_DIR
from core.training.pipeline import run
from worker.childenv import child_environment

STEPS = 4


def _spec(model_dir: Path, data: Path, **fields) -> JobSpec:
    return JobSpec(
        model=str(model_dir),
        training_file=str(data),
        hyperparameters={"max_steps": STEPS, "batch_size": 4, "max_seq_length": 64, "learning_rate": 1e-2},
        evaluation={"generation_samples": 0, "metrics": ["loss"]},
        **fields,
    )


@pytest.fixture(scope="module")
def wandb_run(tiny_model_dir, learn_file, tmp_path_factory):
    """A run with a W&B integration, offline: the key and mode come from the environment
    (the worker's, in production), where the run goes from the job."""
    out, wandb_dir = tmp_path_factory.mktemp("integrations-out"), tmp_path_factory.mktemp("wandb")
    spec = _spec(
        tiny_model_dir, learn_file,
        integrations=[{"type": "wandb", "wandb": {"project": "tf-test", "name": "tiny-run", "entity": "team-x", "tags": ["a", "b"]}}],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(wandb_dir))
        mp.setenv("WANDB_SILENT", "true")
        result = run(spec, out)
        import wandb

        wandb.teardown()  # stops this process's wandb-core service (a worker's child just exits)
    assert result.status == "succeeded" and result.global_step == STEPS
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, wandb_dir, {m["step"]: m["loss"] for m in losses if "loss" in m}


def tfevent_scalars(path: Path) -> dict[str, dict[int, float]]:
    """Every scalar in one TFRecord event file: length, its CRC, the Event proto, its CRC."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, dict[int, float]] = {}
    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        event = Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                found.setdefault(v.tag, {})[event.step] = v.simple_value
    return found


def test_tensorboard_event_files_hold_the_train_loss(wandb_run):
    out, _, losses = wandb_run
    files = list((out / TENSORBOARD_DIR).rglob("events.out.tfevents.*"))
    assert len(files) == 1, files
    scalars = tfevent_scalars(files[0])
    assert sorted(scalars["train/loss"]) == list(range(1, STEPS + 1))
    assert scalars["train/loss"] == pytest.approx(losses, rel=1e-5)
    assert "train/learning_rate" in scalars
    # Inside the output folder but outside checkpoints/: the runner uploads it as an artifact.
    assert files[0].relative_to(out).parts[0] == TENSORBOARD_DIR


def test_tensorboard_is_written_without_any_integration(tiny_model_dir, learn_file, tmp_path):
    result = run(_spec(tiny_model_dir, learn_file), tmp_path)
    assert result.status == "succeeded"
    (events,) = (tmp_path / TENSORBOARD_DIR).rglob("events.out.tfevents.*")
    assert len(tfevent_scalars(events)["train/loss"]) == STEPS


def wandb_records(path: Path):
    """The records of a W&B run file (`run-*.wandb`): a LevelDB-style log (a 7-byte header,
    32 KiB blocks of chunks: crc32c, length, type) of `wandb_internal_pb2.Record` protobufs.
    wandb 0.2x+ reads it in Go only, so this is the reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:  # block trailer too small for a header: padding
            pos += left_in_block
            continue
        _crc, n, kind = struct.unpack_from("<IHB", data, pos)
        pending += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec


def test_wandb_offline_run_holds_our_loss_and_the_jobs_target(wandb_run):
    _, wandb_dir, losses = wandb_run
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")
    history, run_record = {}, None
    for rec in wandb_records(records):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_record = rec.run
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            if "train/loss" in row:
                history[row["train/global_step"]] = row["train/loss"]
    assert history == pytest.approx(losses, rel=1e-5) and len(history) == STEPS
    assert run_record.project == "tf-test" and run_record.display_name == "tiny-run"
    assert run_record.entity == "team-x" and list(run_record.tags) == ["a", "b"]


def test_child_environment_passes_the_workers_wandb_account_not_a_target():
    env = child_environment({
        "WANDB_API_KEY": "k", "WANDB_MODE": "offline", "WANDB_BASE_URL": "https://wandb.example",
        "WANDB_PROJECT": "elsewhere", "WANDB_ENTITY": "someone", "TUNEFORGE_DATABASE_URL": "postgresql://x",
    })
    assert env == {"WANDB_API_KEY": "k", "WANDB_MODE": "offline", "WANDB_BASE_URL": "https://wandb.example"}
