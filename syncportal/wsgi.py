"""WSGI entry point (gunicorn syncportal.wsgi). Static files are served by whitenoise middleware."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncportal.settings")
application = get_wsgi_application()
