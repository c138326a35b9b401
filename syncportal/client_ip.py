"""The client's real address behind the load balancer, for the sign-in lockout (django-axes).

Behind a load balancer every request arrives from the balancer's address. Keyed on that, a few
wrong passwords typed by anyone would lock a user out for everybody. X-Forwarded-For names the
client, but anyone can send that header, so it is believed only as far as trusted proxies wrote
it: a proxy appends the address it received the request from, so the list is read from the right,
skipping addresses in TRUSTED_PROXIES; the first other address is the client. A request that did
not come from a trusted proxy (REMOTE_ADDR) is keyed on REMOTE_ADDR whatever its headers say.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """TRUSTED_PROXIES entries ("10.0.0.0/8", "192.0.2.7", "fd00::/8") as networks."""
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from exc


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:52000"
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # "::ffff:203.0.113.9"
        return address.ipv4_mapped
    return address


def client_ip(request) -> str:
    """The address the lockout counts failures against (AXES_CLIENT_IP_CALLABLE)."""
    remote = request.META.get("REMOTE_ADDR", "")
    networks = trusted_networks(tuple(settings.TRUSTED_PROXIES))
    remote_address = _address(remote)
    if not networks or remote_address is None or not _trusted(remote_address, networks):
        return remote
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    client = remote_address
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # Garbage where a trusted proxy should have written an address: the chain cannot be
            # followed further, so the last trusted hop stands for the client.
            break
        client = address
        if not _trusted(address, networks):
            break
    return str(client)


def _trusted(address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)
