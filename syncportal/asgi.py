"""ASGI entry point, kept for completeness; production runs the WSGI app under gunicorn."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncportal.settings")
application = get_asgi_application()
