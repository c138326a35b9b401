"""System checks: the HALOPSA_* settings are valid, and deploy checks for settings that are fine
locally and dangerous in production."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from integrations.conf import halo_settings


@register()
def halo_settings_check(app_configs, **kwargs):
    """A bad HALOPSA_* value stops start-up with its reason, not a sync hours later."""
    try:
        halo_settings()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="syncportal.E002")]
    return []


@register(Tags.security, deploy=True)
def halopsa_private_networks_check(app_configs, **kwargs):
    if halo_settings().allow_private_networks and not settings.DEBUG:
        return [
            Error(
                "HALOPSA_ALLOW_PRIVATE_NETWORKS is on outside DEBUG.",
                hint="It lets partner-supplied HaloPSA URLs reach loopback and private addresses; "
                "it exists for the local sandbox and tests only.",
                id="syncportal.E001",
            )
        ]
    return []
