"""The `tuneforge` command line. Commands import their heavy modules lazily so that
`tuneforge --help`, `tuneforge api` and friends start fast and never load torch."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tuneforge: QLoRA fine-tuning service")


@app.command()
def train(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job spec (YAML or JSON)"),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory for artifacts"),
) -> None:
    """Run the whole training pipeline locally, with a progress bar."""
    from core.training.commands import train_command

    train_command(spec, output)


@app.command("make-tiny-model")
def make_tiny_model(directory: Path = typer.Argument(..., help="Where to write the model")) -> None:
    """Write a tiny random-init Llama with a real tokenizer and a Llama-3 chat template."""
    from core.training.commands import make_tiny_model_command

    make_tiny_model_command(directory)


if __name__ == "__main__":
    app()
