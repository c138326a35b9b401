"""Home: what customers owe (outstanding, overdue, ageing per currency) and the partner's connections."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from integrations import selectors


@login_required
def home(request):
    connections = list(selectors.connection_list(user=request.user))
    receivables = selectors.partner_receivables(user=request.user, connections=connections)
    # One row per ageing bucket, one column per currency (narrow enough for a phone).
    ageing = [
        (label, [r.buckets[i] for r in receivables])
        for i, (_key, label, _first, _last) in enumerate(selectors.AGEING_BUCKETS)
    ]
    return render(
        request, "integrations/home.html", {"connections": connections, "receivables": receivables, "ageing": ageing}
    )
