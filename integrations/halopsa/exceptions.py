"""Typed failures of the HaloPSA client.

Every error carries a `message` a partner can act on (shown in the dashboard and in sync errors),
the HTTP `status` when there was one, and `permanent`: True when repeating the same call cannot
help until somebody changes something (credentials, permissions, the URL, the request itself).
Messages never contain the client secret or an access token.
"""

from __future__ import annotations


class HaloError(Exception):
    default_message = "The HaloPSA request failed."
    default_permanent = False

    def __init__(self, message: str | None = None, *, status: int | None = None, permanent: bool | None = None):
        self.message = message or self.default_message
        self.status = status
        self.permanent = self.default_permanent if permanent is None else permanent
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class HaloAuthError(HaloError):
    """The token endpoint refused the credentials, or the API refused a fresh token."""

    default_message = (
        "HaloPSA rejected the client ID or secret. Check both under Configuration > Integrations > "
        "HaloPSA API in HaloPSA (copy the Client ID after saving the application)."
    )
    default_permanent = True


class HaloPermissionError(HaloError):
    default_message = (
        "The HaloPSA API application lacks a permission this portal needs. Grant it under "
        "Configuration > Integrations > HaloPSA API > Applications > Permissions."
    )
    default_permanent = True


class HaloNotFound(HaloError):
    default_message = "HaloPSA has no such record (it may have been deleted)."
    default_permanent = True


class HaloRequestRejected(HaloError):
    """HaloPSA answered 400: it refused the request as invalid. Repeating it will not help."""

    default_message = "HaloPSA rejected the request as invalid."
    default_permanent = True


class HaloRateLimited(HaloError):
    """HaloPSA (or our own request budget) says: not now. `retry_after` is in seconds."""

    default_message = "HaloPSA's rate limit was reached; the work will continue automatically later."

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(message, status=status, permanent=False)
        self.retry_after = retry_after


class HaloServerError(HaloError):
    default_message = "HaloPSA had an internal error; the request will be retried later."


class HaloConnectionError(HaloError):
    default_message = "Could not connect to HaloPSA. Check the HaloPSA URL and that the instance is online."


class HaloTimeout(HaloError):
    default_message = "HaloPSA did not answer in time; the request will be retried later."


class HaloDeadlineReached(HaloError):
    """The caller's own time limit (`HaloClient(deadline=...)`, a sync run's end) came before the
    work was done: no further request, retry or wait was started. The caller words the message
    for its context (a sync run says what it saved and that the next run goes on)."""

    default_message = "The time allowed for this work ran out before HaloPSA had answered."


class HaloBadResponse(HaloError):
    """HaloPSA answered with something that is not what its API returns (malformed JSON, wrong shape)."""

    default_message = "HaloPSA sent a response the portal could not read."


class UnsafeURLError(HaloError):
    """The partner-supplied URL points somewhere we refuse to call (SSRF guard)."""

    default_message = "This HaloPSA URL is not allowed."
    default_permanent = True

    def __init__(self, message: str | None = None, *, refused_address: bool = False):
        super().__init__(message)
        # True: the URL is well formed but points at (or resolves to) an address we never call.
        self.refused_address = refused_address


class HaloAmbiguousWrite(HaloError):
    """A write may or may not have happened in HaloPSA, and looking for it failed too.

    Not permanent: `HaloClient.create_payment` always looks the payment up by our reference before
    posting, so calling it again later is safe and settles the question.
    """

    default_message = (
        "HaloPSA did not confirm whether the payment was recorded, and checking for it failed. "
        "It will be checked again before any new attempt."
    )


class HaloPaymentsUnlistable(HaloError):
    """No source gave a trustworthy list of an invoice's payments, so whether a payment of ours is
    already there cannot be told. Permanent: posting blind could record it twice (a person decides)."""

    default_message = (
        "HaloPSA gave no trustworthy list of the invoice's payments, so the portal cannot check whether "
        "this payment is already there; nothing was posted."
    )
    default_permanent = True
