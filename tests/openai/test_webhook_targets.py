"""Webhooks reach public addresses only unless the deployment allows its own network
(core/egress.py): refused when registered, and again before each send."""

from __future__ import annotations

import httpx
import pytest

from core.egress import TargetRefused, check_target
from core.errors import InvalidRequest
from core.services import webhooks
from core.services.auth import create_team
from worker.webhooks import send

BLOCKED = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",  # a name: resolved (/etc/hosts)
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",  # the cloud metadata endpoint
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4 in IPv6 clothing
    "http://0.0.0.0/hook",
]


@pytest.mark.parametrize("url", BLOCKED)
def test_non_public_targets_are_refused_unless_allowed(url):
    with pytest.raises(TargetRefused, match="webhooks only reach public addresses"):
        check_target(url, allow_private=False)
    check_target(url, allow_private=True)


def test_public_addresses_pass():
    check_target("https://93.184.216.34/hook", allow_private=False)
    check_target("https://[2606:4700::1111]/hook", allow_private=False)


def test_registration_names_the_field(db_session):
    team = create_team(db_session, "egress")
    for url in ("http://169.254.169.254/x", "http://localhost:5432/"):
        with pytest.raises(InvalidRequest) as e:
            webhooks.create_endpoint(db_session, team.id, url)
        assert e.value.param == "url" and e.value.code == "url_not_allowed" and "public addresses" in str(e.value)
    assert webhooks.create_endpoint(db_session, team.id, "http://127.0.0.1/x", allow_private=True).url == "http://127.0.0.1/x"


def test_a_delivery_to_a_private_address_is_not_sent(receiver):
    """Registered while allowed (or resolving elsewhere then): the send checks again."""
    due = webhooks.Due(id="d", endpoint_id="e", url=receiver.url("/private"), secret=webhooks.new_secret(),
                       event_id="evt_1", payload="{}")
    with httpx.Client(timeout=5) as client:
        ok, status, error = send(client, due, allow_private=False)
        assert (ok, status) == (False, None) and "not sent" in error and "127.0.0.1 is loopback" in error, error
        assert receiver.on("/private") == []
        assert send(client, due, allow_private=True)[0] is True
    assert len(receiver.on("/private")) == 1
