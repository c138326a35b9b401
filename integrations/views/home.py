"""Home: the partner's connections at a glance."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from integrations import selectors


@login_required
def home(request):
    connections = selectors.connection_list(user=request.user)
    return render(request, "integrations/home.html", {"connections": connections})
