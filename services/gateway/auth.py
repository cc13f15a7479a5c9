"""Who may call the REST API: bearer tokens with scopes, and the browser rules (Origin, Host, content type).

Pure decisions, no I/O: the guard (`guard.py`) feeds them the request's headers. Tokens are kept only as
SHA-256 digests and a presented token is compared with every one of them in constant time, so neither the
memory of the gateway nor the time it takes to answer tells a token. Tokens are random (`jetdag api-token`),
so a fast hash is the right one; a password hash would only slow every request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from urllib.parse import urlsplit

from shared.settings import GatewaySettings

__all__ = [
    "AuthConfigError",
    "AuthPolicy",
    "Denied",
    "Scope",
    "Token",
    "check_content_type",
    "hash_token",
    "is_loopback",
    "needed_scope",
    "new_token",
    "parse_tokens",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_SECRET_LENGTH = 16
DIGEST_PREFIX = "sha256:"
TOKEN_PREFIX = "jdt_"
"""Generated tokens start with this, so secret scanners and people can tell one when they see it."""
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class Scope(IntEnum):
    """Each scope includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


class AuthConfigError(ValueError):
    """The token configuration cannot be used; the message is one line saying what to set."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    scope: Scope
    digest: bytes


@dataclass(frozen=True, slots=True)
class Denied(Exception):
    """A request refused: its HTTP status and one sentence."""

    status: int
    message: str
    challenge: str | None = None
    """The `WWW-Authenticate` value of a 401/403 (RFC 6750)."""


def hash_token(secret: str) -> str:
    """The `sha256:<hex>` form a tokens file may hold instead of the token itself."""
    return DIGEST_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str, source: str) -> list[Token]:
    """`name:scope:secret` entries separated by commas or lines (`#` starts a comment)."""
    tokens: list[Token] = []
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise AuthConfigError(f"{source}: entry {number} is not name:scope:secret")
        name, scope_name, secret = (p.strip() for p in parts)
        if not NAME_RE.match(name):
            raise AuthConfigError(f"{source}: token name {name!r} must be 1-64 of A-Z, a-z, 0-9, '_', '.' or '-'")
        try:
            scope = Scope[scope_name.upper()]
        except KeyError:
            raise AuthConfigError(
                f"{source}: token {name} has scope {scope_name!r}; use read, write or admin"
            ) from None
        if secret.startswith(DIGEST_PREFIX):
            try:
                digest = bytes.fromhex(secret.removeprefix(DIGEST_PREFIX))
            except ValueError:
                digest = b""
            if len(digest) != hashlib.sha256().digest_size:
                raise AuthConfigError(f"{source}: token {name}: sha256: must be followed by 64 hex digits")
        elif len(secret) < MIN_SECRET_LENGTH:
            raise AuthConfigError(
                f"{source}: token {name} is shorter than {MIN_SECRET_LENGTH} characters "
                "(jetdag api-token makes a strong one)"
            )
        else:
            digest = hashlib.sha256(secret.encode()).digest()
        if any(t.name == name for t in tokens):
            raise AuthConfigError(f"{source}: token name {name} is used twice")
        tokens.append(Token(name, scope, digest))
    return tokens


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(authority: str) -> str:
    """`127.0.0.1:8000` → `127.0.0.1`, `[::1]:8000` → `::1`."""
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What the gateway requires of each request, decided once at start from its settings."""

    tokens: tuple[Token, ...]
    enabled: bool
    origins: frozenset[str]
    any_origin: bool = False
    bind_host: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> AuthPolicy:
        """Raises AuthConfigError (one line, naming what to set) for a configuration that is not safe."""
        tokens = parse_tokens(settings.api_tokens, "JETDAG_API_TOKENS")
        if settings.api_tokens_file:
            path = settings.api_tokens_file
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise AuthConfigError(f"JETDAG_API_TOKENS_FILE: cannot read {path} ({exc})") from None
            more = parse_tokens(text, path)
            clash = {t.name for t in tokens} & {t.name for t in more}
            if clash:
                raise AuthConfigError(f"{path}: token name {sorted(clash)[0]} is also in JETDAG_API_TOKENS")
            tokens += more
        if settings.api_auth not in ("auto", "off"):
            raise AuthConfigError(f"JETDAG_API_AUTH must be auto or off, got {settings.api_auth!r}")
        off = settings.api_auth == "off"
        if off and tokens:
            raise AuthConfigError("JETDAG_API_AUTH=off and API tokens are both set; unset one of them")
        if not tokens and not off and not is_loopback(settings.host):
            raise AuthConfigError(
                f"JETDAG_HOST={settings.host} is not a loopback address and no API tokens are configured: set "
                "JETDAG_API_TOKENS or JETDAG_API_TOKENS_FILE (jetdag api-token makes one; docs/security.md)"
            )
        origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
        any_origin = "*" in origins
        if any_origin and not tokens:
            raise AuthConfigError(
                "JETDAG_CORS_ORIGINS=* without API tokens would let every web page drive this gateway; "
                "list the origins, or configure JETDAG_API_TOKENS"
            )
        return cls(
            tuple(tokens),
            enabled=bool(tokens),
            origins=frozenset(origins),
            any_origin=any_origin,
            bind_host=settings.host,
        )

    # --- decisions ----------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, needed: Scope) -> Token | None:
        """The token of a request that may do what needs `needed`; None when auth is off."""
        if not self.enabled:
            return None
        challenge = 'Bearer realm="jetdag"'
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if not authorization:
            raise Denied(401, "this request needs an API token: send Authorization: Bearer <token>", challenge)
        if scheme.lower() != "bearer" or not presented.strip():
            raise Denied(401, "the Authorization header must be: Bearer <token>", challenge)
        token = self._find(presented.strip())
        if token is None:
            raise Denied(401, "the API token is not valid", f'{challenge}, error="invalid_token"')
        if token.scope < needed:
            raise Denied(
                403,
                f"this request needs a token with the {needed} scope; token {token.name} has {token.scope}",
                f'{challenge}, error="insufficient_scope", scope="{needed}"',
            )
        return token

    def _find(self, presented: str) -> Token | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: Token | None = None
        for token in self.tokens:  # every one, always: the time taken does not depend on which matched
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found

    def check_origin(self, origin: str | None, host: str | None) -> None:
        """A browser names the page that sent the request in `Origin`: only this gateway's own pages and the
        configured origins may call it."""
        if origin is None:
            return  # not a browser's cross-origin request (curl, services, same-origin GETs)
        if self.any_origin or origin.rstrip("/") in self.origins:
            return
        if origin != "null" and host is not None and urlsplit(origin).netloc == host:
            return  # same origin: a page the gateway serves itself
        raise Denied(403, f"requests from origin {origin} are not allowed; add it to JETDAG_CORS_ORIGINS")

    def check_host(self, host: str | None) -> None:
        """Without tokens, only requests addressed to a loopback name: a DNS-rebinding page (evil.example
        resolving to 127.0.0.1) is same-origin to the browser and would otherwise drive the gateway."""
        if self.enabled:
            return
        name = _host_of(host) if host else ""
        if not (is_loopback(name) or name == self.bind_host.strip("[]")):
            raise Denied(
                403, f"host {host} is not allowed without API tokens; use 127.0.0.1 or localhost, or configure tokens"
            )


def needed_scope(method: str, declared: Scope | None) -> Scope:
    """Reads need `read`, changes `write`, unless the route declares more (`opt={"scope": Scope.ADMIN}`)."""
    if declared is not None:
        return declared
    return Scope.READ if method in SAFE_METHODS else Scope.WRITE


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_content_type(method: str, content_type: str | None, has_body: bool) -> None:
    """A change must say it is JSON: an HTML form or `text/plain` (what a cross-site page can send without a
    CORS preflight) is refused before anything is read. A change without a body needs no content type."""
    if method in SAFE_METHODS:
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (not media and not has_body):
        return
    shown = media or "none"
    raise Denied(415, f"a request that changes something must have Content-Type: application/json (got {shown})")
