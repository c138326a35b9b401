"""Home: the partner's connections at a glance."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from integrations.models import Connection


@login_required
def home(request):
    connections = Connection.objects.visible_to(request.user).select_related("partner")
    return render(request, "integrations/home.html", {"connections": connections})
