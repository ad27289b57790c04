"""`tuneforge jobs ...`: fine-tuning jobs from a terminal, through the public API
(core.client). Added to the main command line by core.cli."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer

jobs = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs on a tuneforge server (TUNEFORGE_API_URL / TUNEFORGE_API_KEY)")


def _client():
    from core.client import ApiError, Client

    try:
        return Client.from_env()
    except ApiError as e:
        _fail(e)


def _fail(e) -> None:
    typer.echo(f"error: {e.message}" + (f" (field: {e.param})" if getattr(e, "param", None) else ""), err=True)
    raise typer.Exit(code=1)


def _when(unix: int | None) -> str:
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S") if unix else ""


@jobs.command("create")
def create(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job request as YAML/JSON (the API's fields)"),
    file: Path = typer.Option(None, "--file", "-f", exists=True, dir_okay=False, help="Upload this file as the training file"),
    watch_: bool = typer.Option(False, "--watch", "-w", help="Follow the job until it ends"),
) -> None:
    """Upload the training file (if local) and create a job; prints the job id."""
    from core.client import ApiError, load_spec

    client = _client()
    try:
        body, upload = load_spec(spec, file)
        if upload is not None:
            f = client.upload_file(upload)
            typer.echo(f"uploaded {upload} as {f['id']} ({f['row_count']} rows, columns: {', '.join(f['columns'])})", err=True)
            body["training_file"] = f["id"]
        job = client.create_job(body)
    except ApiError as e:
        _fail(e)
    typer.echo(job["id"])
    if watch_:
        raise typer.Exit(code=_watch(client, job["id"]))


@jobs.command("list")
def list_(limit: int = typer.Option(20, min=1, max=100, help="Newest N jobs")) -> None:
    """The team's newest jobs."""
    from rich.console import Console
    from rich.table import Table

    from core.client import ApiError

    try:
        data = _client().list_jobs(limit=limit)["data"]
    except ApiError as e:
        _fail(e)
    from rich.table import Column

    table = Table(Column("id", no_wrap=True), "status", "progress", "model", "suffix", "created", "loss")
    for j in data:
        steps = f"{j['step'] or 0}/{j['total_steps']}" if j.get("total_steps") else ""
        loss = (j.get("latest_metrics") or {}).get("loss")
        table.add_row(j["id"], j["status"], steps, j["model"].rstrip("/").rsplit("/", 1)[-1], j.get("suffix") or "", _when(j["created_at"]),
                      f"{loss:.4f}" if isinstance(loss, int | float) else "")
    Console().print(table)


@jobs.command("watch")
def watch(job_id: str) -> None:
    """Follow a job: a live progress bar (step/total, loss, ETA) and its events.

    Exits 0 when the job succeeds, 1 when it fails or is cancelled."""
    raise typer.Exit(code=_watch(_client(), job_id))


def _watch(client, job_id: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.client import ApiError, StreamCursor
    from core.states import is_terminal

    seen: set[str] = set()
    cursor = StreamCursor()  # a dropped stream is rejoined where it broke off
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeRemainingColumn())
    try:
        job = client.get_job(job_id)
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(job["status"], total=job.get("total_steps"), completed=job.get("step") or 0, loss="-")

            def say(ev: dict) -> None:
                if ev["id"] not in seen:
                    seen.add(ev["id"])
                    bar.console.print(f"[dim]{_when(ev['created_at'])}[/dim] {ev['message']}")

            for ev in client.events(job_id, limit=100):
                say(ev)
            while not is_terminal(job["status"]):
                for kind, data in client.stream(job_id, cursor):
                    if kind == "event":
                        say(data)
                    elif kind == "metrics" and "loss" in data["values"]:
                        bar.update(task, loss=f"{data['values']['loss']:.4f}")
                    elif kind == "status":
                        job.update(status=data["status"])
                        label = data["status"] + (f" ({data['phase']})" if data.get("phase") else "")
                        bar.update(task, description=label, total=data.get("total_steps"), completed=data.get("step") or 0)
                job = client.get_job(job_id)
                if not is_terminal(job["status"]):
                    time.sleep(1)  # the stream dropped; join it again
            bar.update(task, description=job["status"], completed=job.get("step") or 0)
    except ApiError as e:
        _fail(e)
    if job.get("error"):
        typer.echo(f"error: {job['error']['code']}: {job['error']['message']}", err=True)
    if job.get("fine_tuned_model"):
        typer.echo(f"fine-tuned model: {job['fine_tuned_model']}")
    return 0 if job["status"] == "succeeded" else 1


def _action(job_id: str, action: str) -> None:
    from core.client import ApiError

    try:
        job = _client().action(job_id, action)
    except ApiError as e:
        _fail(e)
    typer.echo(f"{job['id']} {job['status']}")


@jobs.command("cancel")
def cancel(job_id: str) -> None:
    """Cancel a job (a running one is stopped)."""
    _action(job_id, "cancel")


@jobs.command("pause")
def pause(job_id: str) -> None:
    """Pause a job (a running one checkpoints and stops)."""
    _action(job_id, "pause")


@jobs.command("resume")
def resume(job_id: str) -> None:
    """Resume a paused job from its newest checkpoint."""
    _action(job_id, "resume")


@jobs.command("download")
def download(
    job_id: str,
    artifact: str = typer.Option("adapter", "--artifact", "-a", help='An artifact name, "adapter" (the archive), a folder, or "all"'),
    out: Path = typer.Option(Path("."), "--output", "-o", help="Directory to write into"),
) -> None:
    """Download artifacts through signed links; each file's sha256 is checked."""
    from core.client import ApiError

    client = _client()
    try:
        for art in client.pick_artifacts(job_id, None if artifact == "all" else artifact):
            path = client.download(job_id, art, out)
            typer.echo(f"{path}  {art['bytes']} bytes  sha256 {art['sha256'][:16]}… ok")
    except ApiError as e:
        _fail(e)
