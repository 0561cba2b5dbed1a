"""Bearer tokens: who may call, and on which namespaces.

The token file holds one token per line as its SHA-256 hash, never the token itself:

    # hash                                                                   namespaces     name
    sha256:3f0c...e1a9  genome-lab,genome-dev  argo-genome
    sha256:9b7d...04c2  *                      operator

`namespaces` is a comma-separated list, or `*` for every namespace; `name` (optional)
labels the token in logs. Blank lines and `#` comments are ignored. `hash_token` makes
the hash, `format_token_line` a whole line. See docs/security.md.

`TokenAuthInterceptor` authenticates every call except health and reflection and runs
the handler with `allowed_namespaces` set; the servicer calls `check_namespace` for each
namespace a request touches.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fanout.settings import Settings

log = logging.getLogger(__name__)

HASH_PREFIX = "sha256:"
ALL_NAMESPACES = "*"
MIN_TOKEN_LENGTH = 32
NAMESPACE_MAX = 253  # as the servicer's name limit
# Kubernetes probes and grpcurl discovery send no token.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_MAX_FILE_BYTES = 1 << 20
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Printable ASCII without spaces: what fits an HTTP/2 header value unchanged.
_TOKEN = re.compile(r"[!-~]+")

allowed_namespaces: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "allowed_namespaces", default=None
)
"""Namespaces the current call's token may use; `None`: no restriction (no token file,
or a `*` token)."""

caller_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "caller_name", default=None
)
"""The `name` of the current call's token, for logs; `None` without authentication."""


class TokenFileError(ValueError):
    """The token file is unreadable or malformed; the message names the file and line."""

    field = "token_file"

    def __init__(self, description: str, line: int | None = None) -> None:
        where = "token_file" if line is None else f"token_file line {line}"
        super().__init__(f"{where}: {description}")
        self.line = line
        self.description = description


class PermissionDeniedError(Exception):
    """The call's token may not use `namespace`; `field` is the request field that named it."""

    def __init__(self, namespace: str, field: str = "namespace") -> None:
        super().__init__(f"{field}: this token may not use namespace {namespace!r}")
        self.namespace = namespace
        self.field = field


# -- tokens and their hashes ------------------------------------------------------------


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def hash_token(token: str) -> str:
    """`sha256:<64 hex>` for the token file; refuses tokens too weak or unsendable."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("token: must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        # An unsalted hash is safe to publish only for a token nobody can guess.
        raise ValueError(
            f"token: must be at least {MIN_TOKEN_LENGTH} characters, got {len(token)}; "
            "make one with `fanout token new` (new_token())"
        )
    return HASH_PREFIX + _digest(token).hex()


def _check_namespace_name(namespace: str) -> str:
    if not namespace:
        raise ValueError("namespaces: empty namespace in the list")
    if namespace == ALL_NAMESPACES:
        raise ValueError("namespaces: '*' stands alone, not inside a list")
    if len(namespace) > NAMESPACE_MAX:
        raise ValueError(f"namespaces: {namespace[:20]!r}... is longer than {NAMESPACE_MAX}")
    if any(ord(ch) < 33 or ch == "," for ch in namespace):
        raise ValueError(f"namespaces: {namespace!r} holds a space, comma or control character")
    return namespace


def _parse_namespaces(text: str) -> frozenset[str] | None:
    if text == ALL_NAMESPACES:
        return None
    return frozenset(_check_namespace_name(part) for part in text.split(","))


def format_token_line(
    token_hash: str, namespaces: Iterable[str] | None, name: str | None = None
) -> str:
    """One token-file line; `namespaces=None` grants every namespace."""
    digest = _parse_hash(token_hash)
    if namespaces is None:
        scope = ALL_NAMESPACES
    else:
        names = sorted({_check_namespace_name(namespace) for namespace in namespaces})
        if not names:
            raise ValueError("namespaces: name at least one, or pass None for all")
        scope = ",".join(names)
    return f"{HASH_PREFIX}{digest.hex()} {scope} {_check_name(name, digest)}"


@dataclass(frozen=True)
class Grant:
    """One token-file line: a token's hash, its namespaces (`None`: all) and its name."""

    digest: bytes = dataclasses.field(repr=False)  # kept out of anything that might be logged
    namespaces: frozenset[str] | None
    name: str

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def _parse_hash(token_hash: str) -> bytes:
    if not token_hash.lower().startswith(HASH_PREFIX):
        raise ValueError(f"hash: must start with {HASH_PREFIX!r} (the file holds hashes only)")
    hex_digest = token_hash[len(HASH_PREFIX) :].lower()
    if not _HEX_DIGEST.fullmatch(hex_digest):
        raise ValueError("hash: expected 64 hexadecimal digits after 'sha256:'")
    return bytes.fromhex(hex_digest)


def _check_name(name: str | None, digest: bytes) -> str:
    if name is None:
        return f"token-{digest.hex()[:8]}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"name: {name!r} must be 1-64 of letters, digits and '._@-'")
    return name


def _parse_line(line: str) -> Grant:
    fields = line.split()
    if len(fields) not in (2, 3):
        raise ValueError("expected '<sha256:hex> <namespaces|*> [name]'")
    digest = _parse_hash(fields[0])
    namespaces = _parse_namespaces(fields[1])
    name = _check_name(fields[2] if len(fields) == 3 else None, digest)
    return Grant(digest, namespaces, name)


def parse_token_file(text: str) -> tuple[Grant, ...]:
    """All grants of a token file; raises `TokenFileError` naming the first bad line."""
    grants: list[Grant] = []
    seen_digests: dict[bytes, int] = {}
    seen_names: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            grant = _parse_line(line)
        except ValueError as exc:
            raise TokenFileError(str(exc), number) from exc
        if grant.digest in seen_digests:
            # Two scopes for one token: neither can be the one meant.
            raise TokenFileError(
                f"hash: the same token as line {seen_digests[grant.digest]}", number
            )
        if grant.name in seen_names:
            raise TokenFileError(
                f"name: {grant.name!r} already used on line {seen_names[grant.name]}", number
            )
        seen_digests[grant.digest] = number
        seen_names[grant.name] = number
        grants.append(grant)
    return tuple(grants)


def read_token_file(path: Path) -> tuple[Grant, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _MAX_FILE_BYTES:
        raise TokenFileError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path} is not UTF-8 text") from exc
    return parse_token_file(text)


class TokenStore:
    """The grants of a token file; `reload()` swaps them all at once (e.g. on SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._grants = read_token_file(path)
        self._announce("token file loaded")

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenStore | None:
        return None if settings.token_file is None else cls(settings.token_file)

    def __len__(self) -> int:
        return len(self._grants)

    def _announce(self, event: str) -> None:
        log.info(event, extra={"token_file": str(self.path), "tokens": len(self._grants)})
        if not self._grants:
            log.warning(
                "token file %s holds no tokens: every call but health is refused", self.path
            )

    def reload(self) -> bool:
        """Re-read the file; `True` when the grants changed.

        A bad file raises `TokenFileError` and the previous grants stay in force.
        """
        grants = read_token_file(self.path)
        with self._lock:
            if grants == self._grants:
                return False
            self._grants = grants
        self._announce("token file reloaded")
        return True

    def authenticate(self, token: str) -> Grant | None:
        """The grant whose hash matches `token`, or `None`."""
        presented = _digest(token)
        grants = self._grants
        found: Grant | None = None
        # Every entry is compared, so the time taken says nothing about which one matched.
        for grant in grants:
            if hmac.compare_digest(grant.digest, presented) and found is None:
                found = grant
        return found


# -- the interceptor --------------------------------------------------------------------


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> tuple[str | None, str]:
    """The presented token, or `None` with the reason it is unusable."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None, "missing bearer token: send 'authorization: Bearer <token>' metadata"
    if len(values) > 1:
        return None, "more than one authorization entry"
    value = values[0]
    if not isinstance(value, str):
        return None, "authorization metadata must be text"
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None, "authorization metadata must read 'Bearer <token>'"
    return token, ""


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _kind(handler: Any) -> tuple[bool, bool]:
    return bool(handler.request_streaming), bool(handler.response_streaming)


def _refusal(handler: Any, message: str) -> Any:
    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # Same streaming shape as the real method; the request is never deserialised.
    kind = (False, False) if handler is None else _kind(handler)
    return _HANDLER_FACTORIES[kind](refuse)


def _context_for(grant: Grant) -> contextvars.Context:
    # The interceptor runs on the server's polling thread, the handler on a pool thread.
    # Recent grpc releases happen to share one Context between the two, but its
    # maintainers call that scheduling an implementation detail; a private copy per call,
    # entered around every step of the handler, holds whatever grpc does, and nothing
    # is left behind for the next call the pool thread serves.
    context = contextvars.copy_context()
    context.run(allowed_namespaces.set, grant.namespaces)
    context.run(caller_name.set, grant.name)
    return context


class _InContext:
    """Steps a response iterator inside the call's context (the handler body runs there)."""

    def __init__(self, context: contextvars.Context, responses: Iterator[Any]) -> None:
        self._context = context
        self._responses = responses

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> Any:
        return self._context.run(next, self._responses)


def _with_grant(handler: Any, grant: Grant) -> Any:
    kind = _kind(handler)
    behaviour = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[kind]
    wrapped: Callable[..., Any]
    if getattr(behaviour, "experimental_non_blocking", False):

        def wrapped(request: Any, context: grpc.ServicerContext, send: Any) -> Any:
            return _context_for(grant).run(behaviour, request, context, send)

        wrapped.experimental_non_blocking = True  # type: ignore[attr-defined]
    elif kind[1]:

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call_context = _context_for(grant)
            return _InContext(call_context, call_context.run(behaviour, request, context))

    else:

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            return _context_for(grant).run(behaviour, request, context)

    return _HANDLER_FACTORIES[kind](
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED without a known bearer token, except on `open_services`."""

    def __init__(self, tokens: TokenStore, *, open_services: Iterable[str] = OPEN_SERVICES) -> None:
        self._tokens = tokens
        self._open = frozenset(open_services)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        method: str = handler_call_details.method
        parts = method.split("/")
        if len(parts) == 3 and parts[1] in self._open:
            return continuation(handler_call_details)
        token, problem = _bearer(handler_call_details.invocation_metadata)
        grant = None if token is None else self._tokens.authenticate(token)
        handler = continuation(handler_call_details)
        if grant is None:
            # Unknown methods are refused alike, so a caller without a token learns nothing.
            problem = problem or "unknown bearer token"
            log.warning("refused %s: %s", method, problem)
            return _refusal(handler, problem)
        if handler is None:
            return None
        return _with_grant(handler, grant)


def interceptors(tokens: TokenStore | None) -> list[grpc.ServerInterceptor]:
    """For `grpc.server(interceptors=...)`: none without a token file."""
    return [] if tokens is None else [TokenAuthInterceptor(tokens)]


# -- what the servicer calls ------------------------------------------------------------


def check_namespace(namespace: str, *, field: str = "namespace") -> None:
    """Raise `PermissionDeniedError` when the call's token may not use `namespace`."""
    allowed = allowed_namespaces.get()
    if allowed is not None and namespace not in allowed:
        raise PermissionDeniedError(namespace, field)


def visible_namespaces() -> frozenset[str] | None:
    """Namespaces the call may see; `None`: all of them."""
    return allowed_namespaces.get()


def listing_scope(namespace: str | None, *, field: str = "namespace") -> frozenset[str] | None:
    """Namespaces a listing may cover: the requested one (checked), else all visible."""
    if namespace is not None:
        check_namespace(namespace, field=field)
        return frozenset({namespace})
    return visible_namespaces()


__all__ = [
    "ALL_NAMESPACES",
    "OPEN_SERVICES",
    "Grant",
    "PermissionDeniedError",
    "TokenAuthInterceptor",
    "TokenFileError",
    "TokenStore",
    "allowed_namespaces",
    "caller_name",
    "check_namespace",
    "format_token_line",
    "hash_token",
    "interceptors",
    "listing_scope",
    "new_token",
    "parse_token_file",
    "read_token_file",
    "visible_namespaces",
]
