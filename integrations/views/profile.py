"""The signed-in user's profile: the e-mail address alerts go to."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from integrations.forms import ProfileForm
from integrations.services.profile import profile_update


@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    user = request.user
    form = ProfileForm(request.POST or None, initial={"email": user.email, "receives_alerts": user.receives_alerts})
    if request.method == "POST":
        if form.is_valid():
            changed = profile_update(user=user, **form.cleaned_data)
            messages.success(request, "Profile saved." if changed else "Nothing to change.")
            return redirect("profile")
        messages.error(request, "Profile not saved: correct the field marked below.")
    return render(request, "integrations/profile.html", {"form": form})
