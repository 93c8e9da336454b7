"""Tenants (docs/configuration.md, "Tenants"): with API keys configured, each key is a tenant, known by a
stable hash of the key (the key itself is never stored). What a tenant makes (jobs, library voices,
consents, in-flight requests, cached audio) is its own.

A *viewer* is the tenant a lookup is made for: a tenant id, or `EVERYONE` ('') when the server has no
keys, or for the admin key, and for the server's own work. Things with no owner ('': made with no keys
configured, by the admin, or stored before owners were recorded) are shared by every tenant."""

from __future__ import annotations

import hashlib

EVERYONE = ""


def tenant_id(api_key: str | None) -> str:
    """A stable, non-reversible id for an API key ('' for none): the jobs' `scope` since they had one."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32] if api_key else EVERYONE


def visible(owner: str | None, viewer: str) -> bool:
    """Whether `viewer` may see and use something owned by `owner`."""
    return not viewer or not owner or owner == viewer
