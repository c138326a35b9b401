"""Settings for the processes the reliability tests start (sync workers, web server, qcluster).

The production settings, read from the environment like a deployment, plus the few knobs a test
needs and production does not expose as variables: short client backoff (the retry logic still
runs), a short sync lease (a killed worker's lease lapses in seconds, not ten minutes), e-mail kept
in memory (the console backend would mix incident mails into the commands' stdout).
"""

import os

from syncportal.settings import *  # noqa: F403

HALOPSA_RETRY_BASE_DELAY = float(os.environ.get("TEST_HALOPSA_RETRY_BASE_DELAY", "0.05"))
HALOPSA_SYNC_LEASE_TTL = int(os.environ.get("TEST_HALOPSA_SYNC_LEASE_TTL", "600"))
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
