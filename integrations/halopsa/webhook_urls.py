"""Inbound HaloPSA webhooks: one URL per connection (the key routes; Basic auth authenticates)."""

from django.urls import path

from integrations.halopsa.webhooks import halopsa_webhook

urlpatterns: list = [
    path("halo/<uuid:key>/", halopsa_webhook, name="halopsa-webhook"),
    # Pasted without the trailing slash: a POST cannot be redirected, so answer it here too.
    path("halo/<uuid:key>", halopsa_webhook),
]
