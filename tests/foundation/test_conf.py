"""integrations/conf.py: the HALOPSA_* settings' one home (defaults, parsing, re-reading)."""

from __future__ import annotations

import dataclasses

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integrations.conf import HaloSettings, halo_settings, setting_name, settings_from_env


def test_the_environment_overrides_only_what_it_names():
    values = settings_from_env(
        {
            "HALOPSA_RATE_LIMIT": "120",
            "HALOPSA_ALLOW_PRIVATE_NETWORKS": "yes",
            "HALOPSA_BILLING_FLAG_ALTERNATIVES": "a, b,",
            "HALOPSA_SYNC_RUN_SECONDS": "90.5",
            "HALOPSA_WEBHOOK_EVENTNOS": "Invoice Updated=7",
            "OTHER": "x",
        }
    )
    assert values["HALOPSA_RATE_LIMIT"] == 120 and values["HALOPSA_ALLOW_PRIVATE_NETWORKS"] is True
    assert values["HALOPSA_BILLING_FLAG_ALTERNATIVES"] == ("a", "b")
    assert values["HALOPSA_SYNC_RUN_SECONDS"] == 90.5
    assert values["HALOPSA_WEBHOOK_EVENTNOS"] == {"invoice updated": 7}
    # Every other setting is there with its one default.
    defaults = HaloSettings()
    assert set(values) == {setting_name(spec.name) for spec in dataclasses.fields(HaloSettings)}
    assert values["HALOPSA_READ_TIMEOUT"] == defaults.read_timeout == 60.0
    assert "OTHER" not in values


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"HALOPSA_RATE_LIMIT": "many"}, "HALOPSA_RATE_LIMIT"),
        ({"HALOPSA_ALLOW_PRIVATE_NETWORKS": "perhaps"}, "HALOPSA_ALLOW_PRIVATE_NETWORKS"),
        ({"HALOPSA_UNMEASURED_CLOCK": "guess"}, "HALOPSA_UNMEASURED_CLOCK"),
        ({"HALOPSA_PDF_BUDGET_SHARE": "1.5"}, "HALOPSA_PDF_BUDGET_SHARE"),
        ({"HALOPSA_SYNC_DELETION_CHECKS": "-1"}, "HALOPSA_SYNC_DELETION_CHECKS"),
        ({"HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS": "-60"}, "HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS must not be negative"),
        ({"HALOPSA_SYNC_LEASE_WAIT": "-1"}, "HALOPSA_SYNC_LEASE_WAIT must not be negative"),
        ({"HALOPSA_READ_TIMEOUT": "0"}, "HALOPSA_READ_TIMEOUT must be more than 0"),
        ({"HALOPSA_SYNC_LEASE_TTL": "0"}, "HALOPSA_SYNC_LEASE_TTL must be more than 0"),
        ({"HALOPSA_WEBHOOK_EVENTNOS": "invoice updated"}, "HALOPSA_WEBHOOK_EVENTNOS"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(environ, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        settings_from_env(environ)


def test_read_once_and_again_after_a_test_changes_a_setting(settings):
    first = halo_settings()
    assert halo_settings() is first  # cached
    settings.HALOPSA_SYNC_WRITE_BATCH = 7
    assert halo_settings().sync_write_batch == 7
    with override_settings(HALOPSA_SYNC_LEASE_TTL=40):
        assert halo_settings().sync_lease_ttl == 40 and halo_settings().lease_renew_interval == 2
    assert halo_settings().sync_lease_ttl == first.sync_lease_ttl


def test_a_bad_setting_fails_the_system_check(settings):
    settings.HALOPSA_UNMEASURED_CLOCK = "guess"
    errors = [e for e in run_checks() if e.id == "syncportal.E002"]
    assert errors and "HALOPSA_UNMEASURED_CLOCK" in errors[0].msg
