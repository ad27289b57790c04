"""/v1/webhooks (an extension): a team's webhook endpoints and their delivery log.

The secret is in the creation response only; deliveries are signed with it as Standard
Webhooks, so `client.webhooks.unwrap(body, headers, secret=...)` of the openai SDK checks them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.deps import Cursor, Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.schemas import (
    DeletedResource,
    ListObject,
    WebhookCreateRequest,
    WebhookDeliveryObject,
    WebhookEndpointObject,
    list_of,
    webhook_delivery_object,
    webhook_endpoint_object,
)
from core.models import Team
from core.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=responses(*COMMON))


@router.post("", response_model=WebhookEndpointObject, responses=responses(413))
def create(
    body: WebhookCreateRequest,
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
    svc: Services = Depends(services),
):
    ep = webhooks.create_endpoint(session, team.id, body.url, events=body.events, description=body.description,
                                  allow_private=svc.settings.webhook_allow_private_targets)
    session.commit()
    return webhook_endpoint_object(ep, with_secret=True)


@router.get("", response_model=ListObject[WebhookEndpointObject])
def list_endpoints(
    after: Cursor = None,
    limit: int = Query(20, ge=1, le=100),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    page = webhooks.list_endpoints(session, team.id, after=after, limit=limit)
    return list_of([webhook_endpoint_object(ep) for ep in page.data], page.has_more)


@router.get("/{webhook_id}", response_model=WebhookEndpointObject, responses=responses(404))
def retrieve(webhook_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    return webhook_endpoint_object(webhooks.get_endpoint(session, team.id, webhook_id))


@router.delete("/{webhook_id}", response_model=DeletedResource, responses=responses(404))
def delete(webhook_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    ep = webhooks.delete_endpoint(session, team.id, webhook_id)
    session.commit()
    return DeletedResource(id=ep.id, object="webhook_endpoint")


@router.get("/{webhook_id}/deliveries", response_model=ListObject[WebhookDeliveryObject], responses=responses(404))
def deliveries(
    webhook_id: str,
    after: Cursor = None,
    limit: int = Query(20, ge=1, le=100),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    page = webhooks.list_deliveries(session, team.id, webhook_id, after=after, limit=limit)
    return list_of([webhook_delivery_object(d) for d in page.data], page.has_more)
