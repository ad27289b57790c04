"""Where a run's metrics go besides our own store: TensorBoard event files for every job, and
the W&B runs a job's `integrations` ask for (OpenAI's `{type: "wandb", wandb: {...}}`).

Both are transformers' own callbacks, handed to the trainer next to ours. Not through
`report_to`: transformers 5 dropped `TrainingArguments.logging_dir`, and its TensorBoard
callback would then write under `output_dir` (our checkpoints folder, which is not uploaded as
artifacts) unless a process-wide environment variable says otherwise. Giving the callback its
directory keeps the event files in the job's output folder, so the runner uploads them with
the adapter, and leaves `os.environ` alone (the pipeline also runs inside tests and the CLI).

The W&B key is never part of a job: the `wandb` library reads WANDB_API_KEY (and WANDB_MODE,
WANDB_BASE_URL, WANDB_DIR) from the worker's environment, which worker.childenv passes on.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from core.spec import JobSpec, WandbSpec

TENSORBOARD_DIR = "tensorboard"  # inside the job's output folder, uploaded as artifacts/tensorboard/...


def callbacks(spec: JobSpec, out: Path) -> list[TrainerCallback]:
    """The reporting callbacks for one run whose outputs go to `out`: TensorBoard always,
    plus the W&B run when the job has a wandb integration (at most one: JobSpec's rule)."""
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(Path(out) / TENSORBOARD_DIR)
    found: list[TrainerCallback] = [tensorboard]
    found += [_WandbRun(i.wandb) for i in spec.integrations if i.type == "wandb"]
    return found


class _WandbRun(WandbCallback):
    """transformers' W&B callback (config, `train/*` history, step axis), started on the
    project, entity, name and tags the job gave instead of WANDB_PROJECT & co from the
    environment, and finished when training ends, so that a later run in the same process
    (tests, the CLI) starts its own (a pause ends the run too; the resumed attempt logs a
    new run)."""

    def __init__(self, target: WandbSpec):
        super().__init__()
        self.target = target

    def setup(self, args, state, model, **kwargs):
        if state.is_world_process_zero and self._wandb.run is None:
            t = self.target
            # The callback's own setup sees this run and only adds the config to it.
            self._wandb.init(project=t.project, entity=t.entity, name=t.name, tags=t.tags or None)
        super().setup(args, state, model, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.finish()
        self._initialized = False
