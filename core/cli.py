"""The `tuneforge` command line. Commands import their heavy modules lazily so that
`tuneforge --help`, `tuneforge api` and friends start fast and never load torch."""

from __future__ import annotations

from contextlib import contextmanager
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
    from core.services.auth import create_team as create

    with _admin_session() as s:
        team_id = create(s, name, max_running_jobs=max_running_jobs, max_queued_jobs=max_queued_jobs, share=share).id
    typer.echo(team_id)


@admin.command("create-key")
def create_key(
    team: str = typer.Argument(..., help="Team name or id"),
    name: str = typer.Option(None, help="A label for the key"),
) -> None:
    """Create an API key for a team; the key is printed once, alone on the last line."""
    from core.services.auth import create_api_key, find_team

    with _admin_session() as s:
        row = find_team(s, team)
        key_row, key = create_api_key(s, row.id, name=name)
        team_name, team_id, key_id = row.name, row.id, key_row.id
    typer.echo(f"API key {key_id} for team {team_name} ({team_id}); it is shown only now:")
    typer.echo(key)


@admin.command("list-keys")
def list_keys(team: str = typer.Argument(..., help="Team name or id")) -> None:
    """A team's keys: id, prefix, created, last used, revoked (never the key itself)."""
    from core.services.auth import find_team, list_keys as keys_of

    with _admin_session() as s:
        rows = [(k.id, k.prefix, _when(k.created_at), _when(k.last_used_at), _when(k.revoked_at), k.name or "")
                for k in keys_of(s, find_team(s, team).id)]
    typer.echo("\t".join(("id", "prefix", "created", "last_used", "revoked", "name")))
    for row in rows:
        typer.echo("\t".join(row))


@admin.command("revoke-key")
def revoke_key(key_id: str = typer.Argument(..., help="The key's id (see list-keys)")) -> None:
    """Revoke an API key: requests with it answer 401 from now on."""
    from core.services.auth import revoke_key as revoke

    with _admin_session() as s:
        row = revoke(s, key_id)
        typer.echo(f"key {row.id} ({row.prefix}...) revoked at {_when(row.revoked_at)}")


@admin.command("set-retention")
def set_retention(
    team: str = typer.Argument(..., help="Team name or id"),
    keep_checkpoints: int = typer.Option(..., min=0, help="Newest checkpoints kept after a job ends"),
    keep_best: bool = typer.Option(True, help="Also keep the checkpoint with the lowest eval loss"),
) -> None:
    """Set how many checkpoints of a finished job the team keeps (default 2 + the best)."""
    from core.services.auth import find_team

    with _admin_session() as s:
        row = find_team(s, team)
        row.keep_checkpoints, row.keep_best_checkpoint = keep_checkpoints, keep_best
    typer.echo(f"team {team}: keeps the newest {keep_checkpoints} checkpoint(s){' and the best' if keep_best else ''}")


@admin.command("gc")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed")) -> None:
    """Reclaim what retention and crashes left behind: checkpoints beyond a team's policy,
    store objects no row refers to, this host's stale work dirs, old history (if enabled)."""
    from core.db import get_engine
    from core.services.retention import collect_garbage
    from core.storage import get_store

    settings = _settings()
    report = collect_garbage(get_engine(settings.database_url), get_store(settings), settings.work_dir, dry_run=dry_run,
                             retention_days=settings.event_retention_days)
    lines = report.lines(dry_run)
    for line in lines:
        typer.echo(line)
    typer.echo(f"{len(lines)} item(s) {'to remove' if dry_run else 'removed'}")


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if dt else "-"


@contextmanager
def _admin_session():
    """A committed unit of work for an admin command; domain errors become `error: ...` and exit 1."""
    from core.db import get_engine, session_scope
    from core.errors import TuneforgeError

    settings = _settings()
    try:
        with session_scope(get_engine(settings.database_url)) as s:
            yield s
    except TuneforgeError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(code=1) from None


def _add_jobs() -> None:
    """`tuneforge jobs ...`, the terminal client of the API (core/jobs_cli.py)."""
    from core.jobs_cli import jobs

    app.add_typer(jobs, name="jobs")


_add_jobs()


if __name__ == "__main__":
    app()
