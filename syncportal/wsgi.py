"""WSGI entry point for `manage.py runserver` and WSGI hosts. Production's web process is
syncportal.asgi under gunicorn's asgi worker (slow clients cannot stall it; docs/deploy.md)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncportal.settings")
application = get_wsgi_application()
