"""The HaloPSA webhook receiver: thin, fast, and never a 500.

Order of checks: unknown key 404 -> body too large 413 -> credentials 401 -> disabled connection
410 -> not a JSON object 400 -> store (duplicate 200) -> 202. The work itself happens in a task.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from integrations.conf import halo_settings
from integrations.services.webhooks import (
    WebhookError,
    webhook_connection_for_key,
    webhook_event_accept,
    webhook_hmac_header,
    webhook_payload_parse,
    webhook_request_authenticate,
)

logger = logging.getLogger(__name__)

# One body for every authentication failure, so a caller cannot tell which part was wrong.
UNAUTHORIZED_BODY = {"error": "authentication failed"}


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@csrf_exempt
def halopsa_webhook(request: HttpRequest, key) -> JsonResponse:
    try:
        return _receive(request, key)
    except Exception:  # a stored event is never lost by this: storing is the last step that can fail
        logger.exception("webhook receiver error")
        return _error(503, "temporarily unavailable, retry later", Retry_After="30")


def _receive(request: HttpRequest, key) -> JsonResponse:
    if request.method != "POST":
        return _error(405, "method not allowed: HaloPSA webhooks are POST", Allow="POST")
    connection = webhook_connection_for_key(key)
    if connection is None:
        return _error(404, "unknown webhook endpoint")

    limit = halo_settings().webhook_max_body
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _error(413, f"body too large (limit {limit} bytes)")
    body = request.read(limit + 1)  # the stream, not request.body: never more than limit + 1 bytes
    if len(body) > limit:
        return _error(413, f"body too large (limit {limit} bytes)")

    if not webhook_request_authenticate(
        connection=connection,
        authorization=request.headers.get("Authorization", ""),
        body=body,
        signature=request.headers.get(webhook_hmac_header(), ""),
    ):
        response = JsonResponse(UNAUTHORIZED_BODY, status=401)
        response["WWW-Authenticate"] = 'Basic realm="syncportal"'
        return response
    if not connection.enabled:
        # 410: this endpoint is switched off; re-enabling the connection makes it answer again.
        return _error(410, "this connection is disabled in the portal")

    try:
        payload = webhook_payload_parse(body)
    except WebhookError as exc:
        return _error(400, exc.message)

    event, created = webhook_event_accept(
        connection=connection, payload=payload, body=body, headers=dict(request.headers)
    )
    if not created:
        return JsonResponse({"status": "duplicate"}, status=200)
    if event.state == event.State.IGNORED:
        return JsonResponse({"status": "ignored", "event_id": event.pk, "reason": event.error}, status=200)
    return JsonResponse({"status": "accepted", "event_id": event.pk}, status=202)
