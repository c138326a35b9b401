"""Inbound HaloPSA webhooks: authenticate, store, process, replay, set up.

A webhook is only a hint that a record changed. It is authenticated by the connection's one scheme
(Basic, or an HMAC signature when the connection has an HMAC secret), stored before anything else,
deduplicated on HaloPSA's delivery id, and processed in a django-q2 task that re-fetches the
*current* record from HaloPSA through the sync service. Amounts and statuses in the webhook body are
never used, so duplicates and out-of-order deliveries cannot change anything twice. The hourly poll
stays the source of truth (see docs/webhooks.md).

- intake.py: receiving a delivery (authentication, parsing, storing it deduplicated);
- processing.py: turning stored events into sync work (the task, the sweep, replay);
- setup.py: the webhook's set-up (URL, scheme, registration in HaloPSA and its check, manual
  steps, test deliveries);
- common.py: WebhookError and what the others share.
Whether real time works (`webhook_health`) is a read for the dashboard, in integrations/selectors.py.
"""

from __future__ import annotations

from integrations.services.webhooks.common import REALTIME_MIN_VERSION_TEXT, WebhookError
from integrations.services.webhooks.intake import (
    ENTITIES,
    WEBHOOK_SCHEME_BASIC,
    WEBHOOK_SCHEME_HMAC,
    WEBHOOK_SCHEMES,
    db_retry,
    webhook_auth_scheme,
    webhook_connection_for_key,
    webhook_event_accept,
    webhook_event_entity,
    webhook_hmac_header,
    webhook_payload_parse,
    webhook_request_authenticate,
    webhook_signature,
)
from integrations.services.webhooks.processing import (
    LEASE_WAIT_DELAYS,
    MAX_ATTEMPTS,
    SWEEP_AFTER,
    SWEEP_SCHEDULE_NAME,
    SWEEP_TASK,
    WEBHOOK_TASK,
    webhook_event_enqueue,
    webhook_event_process,
    webhook_event_replay,
    webhook_events_requeue_stale,
    webhook_sweep_schedule_ensure,
)
from integrations.services.webhooks.setup import (
    HALO_AUTH_TYPE_HMAC,
    SUBSCRIBED_EVENTS,
    URL_NAME,
    _subscription_check,
    webhook_auth_scheme_set,
    webhook_endpoint_url,
    webhook_event_numbers,
    webhook_halo_auth_type,
    webhook_setup_instructions,
    webhook_subscription_create,
    webhook_subscription_outcome,
    webhook_subscription_spec,
    webhook_test_delivery,
)

# What other code and the tests import from here (_subscription_check: tests/webhooks/test_setup.py).
__all__ = [
    "ENTITIES",
    "HALO_AUTH_TYPE_HMAC",
    "LEASE_WAIT_DELAYS",
    "MAX_ATTEMPTS",
    "REALTIME_MIN_VERSION_TEXT",
    "SUBSCRIBED_EVENTS",
    "SWEEP_AFTER",
    "SWEEP_SCHEDULE_NAME",
    "SWEEP_TASK",
    "URL_NAME",
    "WEBHOOK_SCHEMES",
    "WEBHOOK_SCHEME_BASIC",
    "WEBHOOK_SCHEME_HMAC",
    "WEBHOOK_TASK",
    "WebhookError",
    "_subscription_check",
    "db_retry",
    "webhook_auth_scheme",
    "webhook_auth_scheme_set",
    "webhook_connection_for_key",
    "webhook_endpoint_url",
    "webhook_event_accept",
    "webhook_event_entity",
    "webhook_event_enqueue",
    "webhook_event_numbers",
    "webhook_event_process",
    "webhook_event_replay",
    "webhook_events_requeue_stale",
    "webhook_halo_auth_type",
    "webhook_hmac_header",
    "webhook_payload_parse",
    "webhook_request_authenticate",
    "webhook_setup_instructions",
    "webhook_signature",
    "webhook_subscription_create",
    "webhook_subscription_outcome",
    "webhook_subscription_spec",
    "webhook_sweep_schedule_ensure",
    "webhook_test_delivery",
]
