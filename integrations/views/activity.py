"""Activity log: who did what, when, within the partner (staff see every partner)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from integrations import selectors


@login_required
def activity(request):
    page = selectors.paginate(selectors.activity_list(user=request.user), request.GET.get("page"))
    return render(request, "integrations/activity.html", {"page": page})
