"""Deploy checks for settings that are fine locally and dangerous in production."""
from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def halopsa_private_networks_check(app_configs, **kwargs):
    if getattr(settings, "HALOPSA_ALLOW_PRIVATE_NETWORKS", False) and not settings.DEBUG:
        return [
            Error(
                "HALOPSA_ALLOW_PRIVATE_NETWORKS is on outside DEBUG.",
                hint="It lets partner-supplied HaloPSA URLs reach loopback and private addresses; "
                "it exists for the local sandbox and tests only.",
                id="syncportal.E001",
            )
        ]
    return []
