"""Dashboard routes. Every view scopes objects to the signed-in user's partner."""
from django.urls import path

from integrations.views import home

urlpatterns = [
    path("", home.home, name="home"),
]
