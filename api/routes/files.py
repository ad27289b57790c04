"""/v1/files (OpenAI's Files API, fine-tune purpose)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import Cursor, Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.schemas import DeletedObject, FileObject, ListObject, file_object, list_of
from core.models import Team
from core.services import files
from core.storage import content_disposition

router = APIRouter(prefix="/v1/files", tags=["files"], responses=responses(*COMMON))


@router.post("", response_model=FileObject, responses=responses(413))
def upload(
    file: UploadFile = File(...),
    purpose: str = Form(...),
    expires_anchor: str | None = Form(None, alias="expires_after[anchor]", max_length=32),
    expires_seconds: int | None = Form(None, alias="expires_after[seconds]"),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
    svc: Services = Depends(services),
):
    """OpenAI's `expires_after` (the SDK sends `expires_after[anchor]` and `[seconds]`): the
    file expires that long after its creation, and is deleted by the workers' sweep."""
    lifetime = files.check_expiry(expires_anchor, expires_seconds)
    f = files.upload_file(session, svc.settings, svc.store, team.id, filename=file.filename or "", purpose=purpose, stream=file.file,
                          expires_after=lifetime)
    session.commit()
    return file_object(f)


@router.get("", response_model=ListObject[FileObject])
def list_files(
    purpose: str | None = Query(None, max_length=64),
    after: Cursor = None,
    limit: int = Query(100, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    page = files.list_files(session, team.id, purpose=purpose, after=after, limit=limit, newest_first=order == "desc")
    return list_of([file_object(f) for f in page.data], page.has_more)


@router.get("/{file_id}", response_model=FileObject, responses=responses(404))
def retrieve(file_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    return file_object(files.get_file(session, team.id, file_id))


@router.delete("/{file_id}", response_model=DeletedObject, responses=responses(404, 409, 413))
def delete(
    file_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)
):
    f = files.delete_file(session, svc.store, team.id, file_id)
    session.commit()
    return DeletedObject(id=f.id)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file as uploaded"}, **responses(404)},
)
def content(
    file_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)
):
    f = files.get_file(session, team.id, file_id)
    body = svc.store.open(f.storage_key)

    def chunks():
        with body:
            while chunk := body.read(1024 * 1024):
                yield chunk

    return StreamingResponse(
        chunks(), media_type="application/octet-stream", headers={"Content-Disposition": content_disposition(f.filename)}
    )
