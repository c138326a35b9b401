"""Error reports that hide credentials Django's default filter lets through."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SecretHidingReporterFilter(SafeExceptionReporterFilter):
    # Django's default pattern misses HTTP_AUTHORIZATION, which carries webhook Basic credentials.
    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|AUTH|CREDENTIAL", flags=re.IGNORECASE)

    def get_safe_request_meta(self, request):
        meta = super().get_safe_request_meta(request)
        for name in list(meta):
            if self.hidden_settings.search(name):
                meta[name] = self.cleansed_substitute
        return meta
