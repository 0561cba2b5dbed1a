"""`fanout`: the server's command line (serve, migrate, simulate)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fanout.settings import add_server_arguments, settings_from


def _serve(args: argparse.Namespace) -> int:
    from fanout.server.app import serve
    from fanout.server.logs import configure_logging

    settings = settings_from(args)
    configure_logging(settings.log_format, settings.log_level)
    serve(settings)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from fanout.settings import settings_from
    from fanout.storage import Registry, default_database_url

    settings = settings_from(args)
    url = settings.database_url or default_database_url()
    registry = Registry(url)
    try:
        registry.ensure_schema(upgrade=True)
        print(f"registry at {registry.safe_url} is at the newest schema")
    finally:
        registry.dispose()
    return 0


def _token(args: argparse.Namespace) -> int:
    from fanout.server.auth import format_token_line, hash_token, new_token

    try:
        if args.token_command == "new":
            token = new_token()
            scope = None if args.namespaces == "*" else args.namespaces.split(",")
            line = format_token_line(hash_token(token), scope, args.name)
            print(token)
            # The line for the server's token file goes to stderr, the token alone to stdout.
            print(line, file=sys.stderr)
        else:
            print(hash_token(sys.stdin.readline().strip()))
    except ValueError as exc:
        print(f"fanout token: {exc}", file=sys.stderr)
        return 2
    return 0


def _simulate(argv: list[str]) -> int:
    from fanout.sim.cli import main as simulate_main

    return simulate_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout",
        description="Parallelism advisor for workflow engines: the server and its tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    add_server_arguments(serve)
    serve.set_defaults(handler=_serve)
    migrate = commands.add_parser("migrate", help="upgrade the registry schema to the newest")
    migrate.add_argument("--database-url", help="SQLAlchemy URL (default: the SQLite file)")
    migrate.set_defaults(handler=_migrate)
    token = commands.add_parser("token", help="bearer tokens and their hashes (docs/security.md)")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser(
        "new", help="print a new token, and its token-file line on stderr"
    )
    new.add_argument("--namespaces", required=True, help="comma-separated, or '*' for all")
    new.add_argument("--name", help="how the token appears in the server's logs")
    token_commands.add_parser("hash", help="read a token on stdin, print its sha256:<hex>")
    token.set_defaults(handler=_token)
    commands.add_parser(
        "simulate",
        help="compare fanout with baselines on a simulated cluster (see `fanout simulate -h`)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        return _simulate(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
