"""The CLI's training commands: thin wrappers that print progress and turn user errors into
one clear line and a non-zero exit (no traceback)."""

from __future__ import annotations

from pathlib import Path

from core.training.tiny_model import make_tiny_model

__all__ = ["make_tiny_model", "make_tiny_model_command", "train_command"]


class RichReporter:
    """A progress bar for training steps, one line per phase, event and checkpoint."""

    def __init__(self, console, progress):
        self.console, self.progress, self.task = console, progress, None

    def phase(self, name: str) -> None:
        self.console.print(f"[bold]{name}[/bold]")

    def metrics(self, step: int, values: dict) -> None:
        if "total_steps" not in values:
            shown = ", ".join(
                f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float)
            )
            self.console.print(f"evaluation: {shown}")
            return
        if self.task is None:
            self.task = self.progress.add_task("training", total=values["total_steps"])
        loss = values.get("loss")
        desc = f"loss {loss:.4f}" if isinstance(loss, float) else "eval"
        self.progress.update(self.task, completed=step, description=desc)

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        self.console.print(f"checkpoint {path.name}")

    def event(self, level: str, message: str, data: dict | None = None) -> None:
        self.console.print(f"{level}: {message}")


def _fail(message: str):
    import typer

    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def train_command(spec_path: Path, output: Path) -> None:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from core.datafiles import DataFileError
    from core.spec import JobSpec
    from core.training.errors import TrainingInputError

    try:
        spec = JobSpec.from_file(spec_path)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        _fail(f"{spec_path}: {loc}: {err['msg']}")
    except (ValueError, OSError) as e:  # YAML syntax, unreadable file, not a mapping
        _fail(f"{spec_path}: {str(e).splitlines()[0]}")

    from core.training.pipeline import run

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        try:
            result = run(spec, output, RichReporter(console, progress))
        except (TrainingInputError, DataFileError) as e:
            _fail(str(e))
    console.print(
        f"{result.status} at step {result.global_step}; artifacts in {result.output_dir}"
    )


def make_tiny_model_command(directory: Path) -> None:
    path = make_tiny_model(directory)
    print(f"tiny model written to {path}")
