"""Inbound HaloPSA webhooks: one URL per connection (the key routes; Basic auth authenticates)."""
from django.urls import path

urlpatterns: list = []
