"""ASGI entry point of the web process: `gunicorn syncportal.asgi --config gunicorn.conf.py`.

gunicorn's asgi worker reads request bodies without blocking, so slow clients cannot stall the
webhook endpoint (docs/deploy.md, "Slow clients"); RequestGuard bounds request bodies and times
views for the stuck-request watchdog. syncportal.wsgi stays for `runserver` and the test client.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncportal.settings")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (configured by get_asgi_application)

from syncportal.asgi_guard import RequestGuard  # noqa: E402

# Django's own bound on a request body (DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB): nothing the portal
# accepts is larger (webhook bodies stop at HALOPSA_WEBHOOK_MAX_BODY, 256 KB by default).
application = RequestGuard(django_application, max_body=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
