"""Bearer tokens: the file format, the store, and the interceptor on a real server."""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from fanout.server.auth import (
    MIN_TOKEN_LENGTH,
    PermissionDeniedError,
    TokenAuthInterceptor,
    TokenFileError,
    TokenStore,
    allowed_namespaces,
    caller_name,
    check_namespace,
    format_token_line,
    hash_token,
    interceptors,
    listing_scope,
    new_token,
    parse_token_file,
    read_token_file,
    visible_namespaces,
)
from fanout.settings import Settings

TIMEOUT = 10.0
TEAM_A = "team-a-" + "a" * 40
TEAM_AB = "team-ab-" + "b" * 40
ADMIN = "admin-" + "c" * 40
NEWCOMER = "newcomer-" + "d" * 40


# -- hashes and the file format ---------------------------------------------------------


def test_hash_is_the_sha256_of_the_token() -> None:
    token = new_token()
    assert hash_token(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_new_tokens_are_long_and_distinct() -> None:
    first, second = new_token(), new_token()
    assert first != second
    assert len(first) >= MIN_TOKEN_LENGTH
    hash_token(first)  # accepted as strong enough


@pytest.mark.parametrize(
    ("token", "problem"),
    [("short", "at least"), ("x" * 40 + " y", "without spaces"), ("é" * 40, "ASCII"), ("", "")],
)
def test_weak_or_unsendable_tokens_are_not_hashed(token: str, problem: str) -> None:
    with pytest.raises(ValueError, match="token:") as caught:
        hash_token(token)
    assert problem in str(caught.value)


GOOD_FILE = f"""
# fanout tokens
{hash_token(TEAM_A)}  team-a              argo-team-a
{hash_token(TEAM_AB).upper().replace("SHA256:", "sha256:")}  team-a,team-b

   {hash_token(ADMIN)}  *   operator
"""


def test_a_well_formed_file_parses_into_grants() -> None:
    text = GOOD_FILE
    first, second, third = parse_token_file(text)
    assert first.namespaces == frozenset({"team-a"}) and first.name == "argo-team-a"
    assert second.namespaces == frozenset({"team-a", "team-b"})
    assert second.name == "token-" + hash_token(TEAM_AB)[7:15]  # default name from the hash
    assert third.namespaces is None and third.name == "operator"
    assert first.digest == hashlib.sha256(TEAM_A.encode()).digest()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"{TEAM_A} team-a", "hashes only"),
        ("sha256:1234 team-a", "64 hexadecimal"),
        ("sha256:" + "g" * 64 + " team-a", "64 hexadecimal"),
        ("sha256:" + "0" * 64, "expected '<sha256:hex>"),
        ("sha256:" + "0" * 64 + " a b c", "expected '<sha256:hex>"),
        ("sha256:" + "0" * 64 + " team-a,*", "'*' stands alone"),
        ("sha256:" + "0" * 64 + " team-a,,team-b", "empty namespace"),
        ("sha256:" + "0" * 64 + " " + "n" * 300, "longer than"),
        ("sha256:" + "0" * 64 + " team-a bad/name", "name:"),
    ],
)
def test_a_bad_line_is_named_by_number(line: str, problem: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_token_file(f"# header\n\n{line}\n")
    assert caught.value.line == 3
    assert str(caught.value).startswith("token_file line 3:")
    assert problem in str(caught.value)


def test_one_token_twice_is_refused() -> None:
    text = f"{hash_token(TEAM_A)} team-a\n{hash_token(TEAM_A)} team-b\n"
    with pytest.raises(TokenFileError, match="line 2: hash: the same token as line 1"):
        parse_token_file(text)


def test_one_name_twice_is_refused() -> None:
    text = f"{hash_token(TEAM_A)} team-a ci\n{hash_token(ADMIN)} * ci\n"
    with pytest.raises(TokenFileError, match="line 2: name:"):
        parse_token_file(text)


def test_format_token_line_round_trips() -> None:
    line = format_token_line(hash_token(TEAM_AB), ["team-b", "team-a"], "ci")
    (grant,) = parse_token_file(line)
    assert grant.namespaces == frozenset({"team-a", "team-b"}) and grant.name == "ci"
    everything = format_token_line(hash_token(ADMIN), None)
    assert everything.split()[1] == "*"
    for namespaces, name, problem in [
        (["has space"], None, "namespaces:"),
        (["a,b"], None, "namespaces:"),
        ([], None, "namespaces:"),
        (["team-a"], "two words", "name:"),
    ]:
        with pytest.raises(ValueError, match=problem):
            format_token_line(hash_token(ADMIN), namespaces, name)
    with pytest.raises(ValueError, match="hash:"):
        format_token_line(ADMIN, ["team-a"])


def test_unreadable_token_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"^token_file: cannot read .*absent"):
        read_token_file(tmp_path / "absent")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        read_token_file(binary)


# -- the store --------------------------------------------------------------------------


def write_tokens(path: Path, *entries: tuple[str, str]) -> Path:
    path.write_text("".join(f"{hash_token(t)} {scope}\n" for t, scope in entries))
    return path


def test_store_authenticates_only_known_tokens(tmp_path: Path) -> None:
    store = TokenStore(write_tokens(tmp_path / "tokens", (TEAM_A, "team-a"), (ADMIN, "*")))
    assert len(store) == 2
    grant = store.authenticate(TEAM_A)
    assert grant is not None and grant.allows("team-a") and not grant.allows("team-b")
    admin = store.authenticate(ADMIN)
    assert admin is not None and admin.allows("anything")
    assert store.authenticate(NEWCOMER) is None
    assert store.authenticate(hash_token(TEAM_A)) is None  # the hash is not a token


def test_store_reload_swaps_and_a_bad_file_keeps_the_old_grants(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens", (TEAM_A, "team-a"))
    store = TokenStore(path)
    assert store.reload() is False
    write_tokens(path, (NEWCOMER, "team-b"))
    assert store.reload() is True
    assert store.authenticate(TEAM_A) is None and store.authenticate(NEWCOMER) is not None
    path.write_text("garbage\n")
    with pytest.raises(TokenFileError, match="line 1"):
        store.reload()
    assert store.authenticate(NEWCOMER) is not None


def test_store_from_settings(tmp_path: Path) -> None:
    assert TokenStore.from_settings(Settings()) is None
    assert interceptors(None) == []
    path = write_tokens(tmp_path / "tokens", (TEAM_A, "team-a"))
    store = TokenStore.from_settings(Settings(token_file=path))
    assert store is not None and store.authenticate(TEAM_A) is not None
    (interceptor,) = interceptors(store)
    assert isinstance(interceptor, TokenAuthInterceptor)


# -- namespace checks without a server --------------------------------------------------


def test_no_authentication_means_no_restriction() -> None:
    check_namespace("anything")
    assert visible_namespaces() is None
    assert listing_scope(None) is None
    assert listing_scope("team-a") == frozenset({"team-a"})


def test_check_namespace_refuses_what_the_token_does_not_cover() -> None:
    def inside() -> None:
        check_namespace("team-a")
        assert listing_scope(None) == frozenset({"team-a"})
        with pytest.raises(PermissionDeniedError) as caught:
            check_namespace("team-b", field="task.namespace")
        assert caught.value.namespace == "team-b" and caught.value.field == "task.namespace"
        assert str(caught.value).startswith("task.namespace:")
        with pytest.raises(PermissionDeniedError):
            listing_scope("team-b")

    context = contextvars.copy_context()
    context.run(allowed_namespaces.set, frozenset({"team-a"}))
    context.run(inside)


# -- the interceptor on a real server ---------------------------------------------------


def _scope() -> bytes:
    allowed = allowed_namespaces.get()
    return b"*" if allowed is None else ",".join(sorted(allowed)).encode()


def _use(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Stands in for the servicer: checks the namespace the request names."""
    try:
        check_namespace(request.decode(), field="task.namespace")
    except PermissionDeniedError as exc:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    return _scope() + b"|" + (caller_name.get() or "-").encode()


def _scope_stream(request: bytes, _context: grpc.ServicerContext) -> Iterator[bytes]:
    # Read at every step: the handler body runs between the server's `next` calls.
    for _ in range(3):
        yield _scope()


def _count_in_scope(requests: Iterator[bytes], _context: grpc.ServicerContext) -> bytes:
    admitted = 0
    for request in requests:
        try:
            check_namespace(request.decode())
            admitted += 1
        except PermissionDeniedError:
            pass
    return str(admitted).encode()


def _echo_scope(requests: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request + b"@" + _scope()


def _peek(_request: bytes, _context: grpc.ServicerContext) -> bytes:
    return repr(allowed_namespaces.get()).encode()


@dataclass
class Running:
    port: int
    tokens: TokenStore
    token_file: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    token_file = write_tokens(
        tmp_path / "tokens", (TEAM_A, "team-a"), (TEAM_AB, "team-a,team-b"), (ADMIN, "*")
    )
    tokens = TokenStore(token_file)
    # One worker: a value left behind by one call would be seen by the next.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1),
        interceptors=[
            TokenAuthInterceptor(tokens, open_services={"grpc.health.v1.Health", "test.Open"})
        ],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Tasks",
                {
                    "Use": grpc.unary_unary_rpc_method_handler(_use),
                    "Scope": grpc.unary_stream_rpc_method_handler(_scope_stream),
                    "Count": grpc.stream_unary_rpc_method_handler(_count_in_scope),
                    "Echo": grpc.stream_stream_rpc_method_handler(_echo_scope),
                },
            ),
            grpc.method_handlers_generic_handler(
                "test.Open", {"Peek": grpc.unary_unary_rpc_method_handler(_peek)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield Running(port, tokens, token_file)
    server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def call_use(running: Running, namespace: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with running.channel() as channel:
        answer: bytes = channel.unary_unary("/test.Tasks/Use")(
            namespace.encode(), metadata=metadata, timeout=TIMEOUT
        )
        return answer


def status_of(thunk: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        thunk()
    return caught.value.code(), caught.value.details()


def test_call_without_token_is_unauthenticated(running: Running) -> None:
    code, details = status_of(lambda: call_use(running, "team-a"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in details


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (bearer(NEWCOMER), "unknown bearer token"),
        (bearer(hash_token(TEAM_A)), "unknown bearer token"),
        ((("authorization", f"Basic {TEAM_A}"),), "must read 'Bearer <token>'"),
        ((("authorization", "Bearer"),), "must read 'Bearer <token>'"),
        ((*bearer(TEAM_A), *bearer(ADMIN)), "more than one"),
    ],
)
def test_bad_token_is_unauthenticated(
    running: Running, metadata: tuple[tuple[str, str], ...], problem: str
) -> None:
    code, details = status_of(lambda: call_use(running, "team-a", metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert problem in details


def test_good_token_is_served_with_its_scope(running: Running) -> None:
    assert (
        call_use(running, "team-a", bearer(TEAM_A))
        == b"team-a|token-" + hash_token(TEAM_A)[7:15].encode()
    )
    assert call_use(running, "team-b", bearer(TEAM_AB)).startswith(b"team-a,team-b|")
    # The scheme is case-insensitive (RFC 6750 follows RFC 7235 there).
    lower = (("authorization", f"bearer {TEAM_A}"),)
    assert call_use(running, "team-a", lower).startswith(b"team-a|")


def test_token_on_another_namespace_is_permission_denied(running: Running) -> None:
    code, details = status_of(lambda: call_use(running, "team-b", bearer(TEAM_A)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "task.namespace: this token may not use namespace 'team-b'"


def test_wildcard_token_reaches_every_namespace(running: Running) -> None:
    assert call_use(running, "anything-at-all", bearer(ADMIN)).startswith(b"*|")


def test_unknown_method_reveals_nothing_without_a_token(running: Running) -> None:
    with running.channel() as channel:
        missing = channel.unary_unary("/test.Tasks/Missing")
        code, _ = status_of(lambda: missing(b"", timeout=TIMEOUT))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = status_of(lambda: missing(b"", metadata=bearer(TEAM_A), timeout=TIMEOUT))
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_health_needs_no_token(running: Running) -> None:
    with running.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_is_open_by_default(tmp_path: Path) -> None:
    tokens = TokenStore(write_tokens(tmp_path / "tokens", (TEAM_A, "team-a")))
    tokens_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1), interceptors=interceptors(tokens)
    )
    reflection.enable_server_reflection((reflection.SERVICE_NAME,), tokens_server)
    port = tokens_server.add_insecure_port("127.0.0.1:0")
    tokens_server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            (answer,) = list(stub.ServerReflectionInfo(requests, timeout=TIMEOUT))
        names = {s.name for s in answer.list_services_response.service}
        assert reflection.SERVICE_NAME in names
    finally:
        tokens_server.stop(None)


def test_scope_reaches_the_body_of_streaming_handlers(running: Running) -> None:
    with running.channel() as channel:
        scope = channel.unary_stream("/test.Tasks/Scope")
        assert list(scope(b"", metadata=bearer(TEAM_AB), timeout=TIMEOUT)) == [b"team-a,team-b"] * 3
        count = channel.stream_unary("/test.Tasks/Count")
        names = [b"team-a", b"team-b", b"team-c", b"team-a"]
        assert count(iter(names), metadata=bearer(TEAM_A), timeout=TIMEOUT) == b"2"
        assert count(iter(names), metadata=bearer(ADMIN), timeout=TIMEOUT) == b"4"
        echo = channel.stream_stream("/test.Tasks/Echo")
        answers = list(echo(iter([b"x", b"y"]), metadata=bearer(TEAM_A), timeout=TIMEOUT))
        assert answers == [b"x@team-a", b"y@team-a"]
        code, _ = status_of(lambda: list(echo(iter([b"x"]), timeout=TIMEOUT)))
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_scope_does_not_leak_into_the_next_call_on_the_same_thread(running: Running) -> None:
    assert call_use(running, "team-a", bearer(TEAM_A)).startswith(b"team-a|")
    with running.channel() as channel:
        with_streams = channel.unary_stream("/test.Tasks/Scope")
        list(with_streams(b"", metadata=bearer(TEAM_A), timeout=TIMEOUT))
        peek = channel.unary_unary("/test.Open/Peek")
        assert peek(b"", timeout=TIMEOUT) == b"None"


def test_token_file_reload_admits_new_tokens_and_revokes_old(running: Running) -> None:
    assert call_use(running, "team-a", bearer(TEAM_A)).startswith(b"team-a|")
    write_tokens(running.token_file, (NEWCOMER, "team-a"))
    assert running.tokens.reload() is True
    assert call_use(running, "team-a", bearer(NEWCOMER)).startswith(b"team-a|")
    code, _ = status_of(lambda: call_use(running, "team-a", bearer(TEAM_A)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_empty_token_file_refuses_everyone_but_health(running: Running) -> None:
    running.token_file.write_text("# every token revoked\n")
    assert running.tokens.reload() is True
    assert len(running.tokens) == 0
    code, _ = status_of(lambda: call_use(running, "team-a", bearer(ADMIN)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def _push_scope(_request: bytes, _context: grpc.ServicerContext, send: Callable[..., None]) -> None:
    send(_scope())
    send(None)  # ends the stream


setattr(_push_scope, "experimental_non_blocking", True)  # noqa: B010


def test_non_blocking_handlers_keep_working_behind_authentication(tmp_path: Path) -> None:
    # `experimental_non_blocking` handlers answer through a callback grpc passes as a
    # third argument (grpc's health Watch is one); the wrapper must keep that shape.
    tokens = TokenStore(write_tokens(tmp_path / "tokens", (TEAM_A, "team-a")))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors(tokens)
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Push", {"Scope": grpc.unary_stream_rpc_method_handler(_push_scope)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            push = channel.unary_stream("/test.Push/Scope")
            assert list(push(b"", metadata=bearer(TEAM_A), timeout=TIMEOUT)) == [b"team-a"]
            code, _ = status_of(lambda: list(push(b"", timeout=TIMEOUT)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(None)
