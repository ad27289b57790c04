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


def _settings():
    from core.config import get_settings

    try:
        return get_settings()
    except ValueError as e:  # pydantic's ValidationError: say which variable, not a traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None


def _exec(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process, so a container's stop signal reaches the server directly."""
    import os

    from core.embedded import child_env

    os.execvpe(cmd[0], cmd, child_env(env or {}))


@app.command()
def migrate() -> None:
    """Bring the database (TUNEFORGE_DATABASE_URL) to the newest schema."""
    from core.migrate import upgrade_head

    settings = _settings()
    upgrade_head(settings.database_url)
    typer.echo("database is at the newest revision")


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="Port to listen on"),
) -> None:
    """Serve the HTTP API (uvicorn api.app:app)."""
    from core.embedded import api_command

    _settings()
    _exec(api_command(host, port))


@app.command()
def worker(
    slots: int = typer.Option(None, help="Jobs run at once (default: TUNEFORGE_WORKER_SLOTS, usually one per GPU)"),
    queues: str = typer.Option(None, help="Comma-separated queues (default: TUNEFORGE_QUEUE)"),
) -> None:
    """Run a Celery worker that trains jobs (celery -A worker.app worker)."""
    from core.embedded import worker_command

    _settings()
    _exec(worker_command(queues=queues), {"TUNEFORGE_WORKER_SLOTS": str(slots)} if slots else None)


@app.command()
def up(
    home: Path = typer.Option(Path(".tuneforge"), help="State directory: database, broker, artifacts, secret, key"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    slots: int = typer.Option(1, help="Jobs the embedded worker runs at once"),
) -> None:
    """Run everything on this machine (SQLite, filesystem broker, local artifacts): API + one worker."""
    from core.embedded import up as run_up

    raise typer.Exit(code=run_up(home, host, port, slots, typer.echo))


@app.command("export-adapters")
def export_adapters(
    dest: Path = typer.Argument(..., help="The directory vLLM's lora_filesystem_resolver reads (VLLM_LORA_RESOLVER_CACHE_DIR)"),
    served_base: str = typer.Option(..., help="The name vLLM serves the base model under (its --model)"),
    base_model: str = typer.Option(None, help="Export only adapters trained on this base (a job's `model`); default: --served-base"),
    watch: float = typer.Option(0.0, help="Repeat every N seconds, removing deleted models too (0: once)"),
) -> None:
    """Lay out fine-tuned adapters as `DEST/<ft:... id>/` for vLLM to load at request time."""
    import logging
    import time

    from core.db import get_engine, session_scope
    from core.services.models_catalog import export_adapters as export
    from core.storage import get_store

    settings = _settings()
    engine, store = get_engine(settings.database_url), get_store(settings)
    while True:
        try:
            with session_scope(engine) as s:
                names = export(s, store, dest, served_base, base_model=base_model or served_base)
            typer.echo(f"{len(names)} adapter(s) in {dest}")
        except Exception:
            if not watch:
                raise
            logging.getLogger(__name__).exception("exporting adapters failed; retrying in %ss", watch)
        if not watch:
            return
        time.sleep(watch)


admin = typer.Typer(no_args_is_help=True, help="Teams and API keys")
app.add_typer(admin, name="admin")


@admin.command("create-team")
def create_team(
    name: str,
    max_running_jobs: int = typer.Option(None, help="Jobs of this team running at once (default: no limit)"),
    max_queued_jobs: int = typer.Option(None, help="Jobs of this team waiting at once (default: no limit)"),
    share: float = typer.Option(1.0, help="Fair-share weight against other teams"),
) -> None:
    """Create a team; prints its id."""
    from core.db import get_engine, session_scope
    from core.errors import TuneforgeError
    from core.services.auth import create_team as create

    settings = _settings()
    try:
        with session_scope(get_engine(settings.database_url)) as s:
            team = create(s, name, max_running_jobs=max_running_jobs, max_queued_jobs=max_queued_jobs, share=share)
            team_id = team.id
    except TuneforgeError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(team_id)


@admin.command("create-key")
def create_key(
    team: str = typer.Argument(..., help="Team name or id"),
    name: str = typer.Option(None, help="A label for the key"),
) -> None:
    """Create an API key for a team; the key is printed once, alone on the last line."""
    from sqlalchemy import or_, select

    from core.db import get_engine, session_scope
    from core.models import Team
    from core.services.auth import create_api_key

    settings = _settings()
    with session_scope(get_engine(settings.database_url)) as s:
        row = s.scalars(select(Team).where(or_(Team.name == team, Team.id == team))).first()
        if row is None:
            typer.echo(f"error: no team named {team!r}", err=True)
            raise typer.Exit(code=1)
        _key_row, key = create_api_key(s, row.id, name=name)
    typer.echo(f"API key for team {row.name} ({row.id}); it is shown only now:")
    typer.echo(key)


if __name__ == "__main__":
    app()
