"""API keys and admin access, as router dependencies: a router declares who may call it.

`require_api_key` guards the API routers; `require_admin` guards the admin routers (the admin key when
one is configured, which then suffices alone; else loopback clients only, with an API key when those are
configured). `/health` and `/ready` are open; `/metrics` needs a key only when `metrics_require_key`.
The admin key also opens the API routes. `tenant` / `viewer` / `cache_scope` say who the caller is as a
tenant (voxport.tenants; docs/configuration.md, "Tenants")."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field

from fastapi import Request

from voxport.errors import VoxportError
from voxport.tenants import EVERYONE, tenant_id


@dataclass(frozen=True)
class AccessPolicy:
    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    metrics_require_key: bool = False
    _encoded: tuple[bytes, ...] = field(init=False, default=())
    _accepted: tuple[bytes, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_encoded", tuple(k.encode() for k in self.api_keys))
        # The admin key also opens the API routes (as the admin: every tenant's voices and consents).
        admin = (self.admin_key.encode(),) if self.admin_key is not None and self.api_keys else ()
        object.__setattr__(self, "_accepted", self._encoded + admin)

    @staticmethod
    def _matches(token: bytes | None, keys: tuple[bytes, ...]) -> bool:
        # Compare against every key, in constant time each, without stopping at the first match.
        found = False
        for key in keys:
            found |= token is not None and hmac.compare_digest(token, key)
        return found

    def check_api_key(self, request: Request) -> None:
        if self._encoded and not self._matches(_bearer(request), self._accepted):
            raise _unauthorized("Incorrect or missing API key: send `Authorization: Bearer <key>`.")

    def check_token(self, token: str | None) -> None:
        """An API key that came another way than the header (the speech socket's subprotocol)."""
        if self._encoded and not self._matches(token.encode() if token else None, self._encoded):
            raise _unauthorized("Incorrect or missing API key: send `Authorization: Bearer <key>`.")

    def tenant(self, request: Request) -> str:
        """The caller's tenant (a hash of its key; '' with no keys configured): it owns what it makes."""
        if not self._encoded:
            return EVERYONE
        token = _bearer(request)
        return tenant_id(token.decode("latin-1") if token is not None else None)

    def viewer(self, request: Request) -> str:
        """Whose things the caller may see and use: its tenant's, or every tenant's for the admin key."""
        admin = self.admin_key is not None and self._matches(_bearer(request), (self.admin_key.encode(),))
        return EVERYONE if admin else self.tenant(request)

    def cache_scope(self, request: Request, shared: bool) -> str:
        """The cache partition: per tenant when several keys exist, unless `shared` (one tenant)."""
        return "" if shared or len(self._encoded) < 2 else self.tenant(request)

    def check_admin(self, request: Request) -> None:
        if self.admin_key is not None:
            if not self._matches(_bearer(request), (self.admin_key.encode(),)):
                raise _unauthorized("This route needs the admin API key.")
            return
        if not _from_loopback(request):
            raise VoxportError(
                "forbidden",
                "Admin routes are reachable from loopback only while no admin key is configured.",
                code="forbidden",
            )
        self.check_api_key(request)


def _unauthorized(message: str) -> VoxportError:
    return VoxportError("unauthorized", message, code="invalid_api_key")


def _bearer(request: Request) -> bytes | None:
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.encode("latin-1").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


def _from_loopback(request: Request) -> bool:
    if not request.client:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _policy(request: Request) -> AccessPolicy:
    return request.app.state.policy


async def require_api_key(request: Request) -> None:
    _policy(request).check_api_key(request)


async def require_admin(request: Request) -> None:
    _policy(request).check_admin(request)


async def require_metrics_key(request: Request) -> None:
    policy = _policy(request)
    if policy.metrics_require_key:
        policy.check_api_key(request)
