"""/v1/models: OpenAI's model list and object, over the base models this server allows and
the team's fine-tuned models; DELETE removes a fine-tuned model's artifacts."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from api.deps import Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.schemas import DeletedResource, ListObject, ModelObject, list_of, model_object
from core.models import Team
from core.services import models_catalog

router = APIRouter(prefix="/v1/models", tags=["models"], responses=responses(*COMMON))


@router.get("", response_model=ListObject[ModelObject])
def list_models(team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)):
    return list_of([model_object(m) for m in models_catalog.list_models(session, svc.settings, team.id)])


# `:path`: hub ids ("org/name") and local model directories contain slashes.
@router.get("/{model_id:path}", response_model=ModelObject, responses=responses(404))
def retrieve(model_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)):
    return model_object(models_catalog.get_model(session, svc.settings, team.id, model_id))


@router.delete("/{model_id:path}", response_model=DeletedResource, responses=responses(404))
def delete(model_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)):
    models_catalog.delete_model(session, svc.store, team.id, model_id)
    session.commit()
    return DeletedResource(id=model_id, object="model")
