"""Signed artifact downloads for the local store. The token in the path is the whole
authorisation (it was handed to the job's own team by GET .../artifacts/{name}); no API
key is needed, so links work from a browser or `curl`. S3 links go to S3 directly."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from api.deps import Services, services
from api.errors import responses
from core.errors import NotFound
from core.storage import LocalStore, content_disposition, decode_download_token

router = APIRouter(tags=["downloads"])


@router.get(
    "/v1/downloads/{token}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact"}, **responses(400, 403, 404)},
)
def download(token: str, svc: Services = Depends(services)):
    grant = decode_download_token(token, svc.settings.secret_key)  # Forbidden (403) unless intact and unexpired
    store = svc.store
    path = store.local_path(grant.key) if isinstance(store, LocalStore) else None
    if path is None or not path.is_file():
        raise NotFound("The file behind this download link no longer exists", param="token")
    name = grant.filename or path.name
    return FileResponse(path, media_type="application/octet-stream", headers={"Content-Disposition": content_disposition(name)})
