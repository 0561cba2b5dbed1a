"""`fanout-client`: the step CLI for workflow engines (Argo steps, shell scripts).

Exit codes: 0 done (also a report or fallback recommendation while fanout is
unreachable), 1 the server refused for another reason, 2 bad input, 3 fanout
unreachable (a recommend without default, a `report --strict`, the read commands).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fanout_client import _convert
from fanout_client._base import DEFAULT_TARGET
from fanout_client.advisor import Advisor
from fanout_client.argo import argo_succeeded, duration_between, parse_rfc3339, split_chunks
from fanout_client.errors import FanoutError, InvalidArgumentError, UnavailableError
from fanout_client.models import Recommendation, Strategy, TaskRef

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

PROG = "fanout-client"


class UsageError(Exception):
    """Bad input found after parsing; the message names the option."""


# -- argument types (argparse names the option in their errors) ---------------------


def _number(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or (value == low and not inclusive):
            relation = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {relation} {low:g}, got {text}")
        return value

    return parse


def _whole(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _time(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


positive = _number(0.0, inclusive=False)
non_negative = _number(0.0, inclusive=True)
width = _whole(1)


# -- the parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask fanout for a fan-out width and report how the run went.",
        epilog="Exit codes: 0 ok, 1 refused by the server, 2 bad input, 3 fanout unreachable.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("FANOUT_TARGET") or DEFAULT_TARGET,
        help="fanout server host:port (env FANOUT_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("FANOUT_NAMESPACE") or "default",
        help="namespace of the tasks (env FANOUT_NAMESPACE; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive,
        default=5.0,
        help="seconds per attempt of a call (default %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=_whole(0),
        default=3,
        help="retries when fanout is unavailable (default %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding a bearer token (default: env FANOUT_TOKEN, else none)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    parser.add_argument(
        "--root-certificates-file", type=Path, help="PEM CA bundle to verify the server (TLS)"
    )
    parser.add_argument("--certificate-file", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument(
        "--private-key-file", type=Path, help="PEM key of the client certificate (mutual TLS)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recommend = commands.add_parser(
        "recommend",
        help="print the width for the next run of a task",
        description="Print the recommended width (or, with --chunks, the chunk groups).",
    )
    _task_options(recommend, required=True)
    recommend.add_argument("--input-size", type=positive, help="input size N of this run")
    recommend.add_argument(
        "--cluster-load", type=non_negative, help="cluster load override (sum of widths)"
    )
    recommend.add_argument("--min", dest="min_parallelism", type=width, help="smallest width")
    recommend.add_argument("--max", dest="max_parallelism", type=width, help="largest width")
    recommend.add_argument("--urgency", type=positive, help="urgency a (0.5 money .. 2 time)")
    recommend.add_argument("--resource-exponent", type=non_negative, help="resource exponent b")
    recommend.add_argument("--deadline-seconds", type=positive, help="deadline of this run")
    recommend.add_argument(
        "--confidence", type=positive, help="probability of meeting the deadline, in (0, 1)"
    )
    recommend.add_argument(
        "--strategy", choices=[s.value for s in Strategy], help="candidate bounds rule"
    )
    recommend.add_argument(
        "--default-parallelism",
        type=width,
        help="width to use when fanout is unreachable (exit 0 with a warning)",
    )
    recommend.add_argument(
        "--json", action="store_true", help="print the whole recommendation as JSON"
    )
    recommend.add_argument("--output-file", type=Path, help="write the width to this file")
    recommend.add_argument(
        "--id-file",
        type=Path,
        help="write the recommendation id to this file (empty on fallback)",
    )
    recommend.add_argument(
        "--chunks",
        type=width,
        help="split chunk indices 0..N-1 into contiguous groups, one per pod; "
        "prints them as JSON for withParam (the width is capped at N)",
    )
    recommend.add_argument(
        "--chunks-file", type=Path, help="write the chunk groups JSON to this file"
    )
    recommend.set_defaults(handler=_recommend)

    report = commands.add_parser(
        "report",
        help="report one finished run",
        description="Report how long one run took. While fanout is unreachable this warns "
        "and exits 0 (so an exit handler does not fail the workflow) unless --strict.",
    )
    target = report.add_mutually_exclusive_group(required=True)
    target.add_argument("--recommendation-id", help="the id printed by recommend --id-file")
    target.add_argument("--task", help="WORKFLOW/TASK of a run that did not ask")
    report.add_argument("--model-key", help="shared model of the task (with --task)")
    report.add_argument("--parallelism", type=width, help="width the run used (with --task)")
    report.add_argument(
        "--cluster-load", type=non_negative, help="cluster load during the run (with --task)"
    )
    report.add_argument(
        "--execution-id", required=True, help="id of this run; a repeated id is ignored"
    )
    report.add_argument("--duration-seconds", type=positive, help="stage time of the run")
    report.add_argument("--started-at", type=_time, help="RFC 3339 start, e.g. from Argo")
    report.add_argument("--finished-at", type=_time, help="RFC 3339 end")
    report.add_argument("--input-size", type=positive, help="input size N of the run")
    report.add_argument("--startup-seconds", type=non_negative, help="measured start-up time")
    outcome = report.add_mutually_exclusive_group()
    outcome.add_argument("--failed", action="store_true", help="the run failed")
    outcome.add_argument("--outcome", help="Argo phase of the run: Succeeded, Failed or Error")
    report.add_argument("--strict", action="store_true", help="exit 3 when fanout is unreachable")
    report.set_defaults(handler=_report)

    get_task = commands.add_parser(
        "get-task", help="print one task as JSON", description="Print one task as JSON."
    )
    _task_options(get_task, required=True)
    get_task.set_defaults(handler=_get_task)

    list_tasks = commands.add_parser(
        "list-tasks",
        help="print the tasks of the namespace as JSON",
        description="Print the tasks of --namespace (or of all namespaces) as a JSON list.",
    )
    list_tasks.add_argument(
        "--all-namespaces", action="store_true", help="list every namespace's tasks"
    )
    list_tasks.add_argument(
        "--page-size", type=width, default=100, help="tasks fetched per call (default 100)"
    )
    list_tasks.set_defaults(handler=_list_tasks)
    return parser


def _task_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--task", required=required, help="the task, as WORKFLOW/TASK")
    parser.add_argument("--model-key", help="model shared by several tasks")


# -- commands -----------------------------------------------------------------------


def _ref(args: argparse.Namespace) -> TaskRef:
    try:
        return TaskRef.parse(args.task, namespace=args.namespace, model_key=args.model_key)
    except ValueError as error:
        raise UsageError(f"--task: {error}") from None


def _recommend(advisor: Advisor, args: argparse.Namespace) -> int:
    ref = _ref(args)
    if args.chunks_file is not None and args.chunks is None:
        raise UsageError("--chunks-file needs --chunks")
    if args.confidence is not None and args.confidence >= 1:
        raise UsageError(f"--confidence: must be < 1, got {args.confidence}")
    max_parallelism = args.max_parallelism
    if args.chunks is not None:
        # More pods than chunks would leave pods idle: cap the search at the chunk count.
        max_parallelism = min(max_parallelism or args.chunks, args.chunks)
    low = args.min_parallelism
    if low is not None and max_parallelism is not None and low > max_parallelism:
        raise UsageError(f"--min ({low}) must not exceed --max or --chunks ({max_parallelism})")
    try:
        recommendation = advisor.recommend(
            ref,
            input_size=args.input_size,
            cluster_load=args.cluster_load,
            min_parallelism=args.min_parallelism,
            max_parallelism=max_parallelism,
            urgency=args.urgency,
            resource_exponent=args.resource_exponent,
            deadline_seconds=args.deadline_seconds,
            confidence=args.confidence,
            strategy=args.strategy,
        )
    except UnavailableError as error:
        if args.default_parallelism is None:
            raise
        fallback = args.default_parallelism
        if max_parallelism is not None:
            fallback = min(fallback, max_parallelism)
        _warn(
            f"fanout at {advisor.target} unreachable ({error.message}); "
            f"using the default parallelism {fallback}"
        )
        recommendation = _convert.fallback_recommendation(ref, fallback, args.input_size)

    groups = split_chunks(args.chunks, recommendation.parallelism) if args.chunks else None
    if args.output_file is not None:
        _write(args.output_file, str(recommendation.parallelism))
    if args.id_file is not None:
        _write(args.id_file, recommendation.id or "")
    if args.chunks_file is not None and groups is not None:
        _write(args.chunks_file, json.dumps(groups))
    if args.json:
        document = _jsonable(recommendation)
        if groups is not None:
            document["groups"] = groups
        print(json.dumps(document, indent=2, sort_keys=True))
    elif groups is not None:
        print(json.dumps(groups))
    else:
        print(recommendation.parallelism)
    return EXIT_OK


def _report(advisor: Advisor, args: argparse.Namespace) -> int:
    duration = _duration(args)
    succeeded = not args.failed
    if args.outcome is not None:
        try:
            succeeded = argo_succeeded(args.outcome)
        except ValueError as error:
            raise UsageError(f"--outcome: {error}") from None
    task_only = {
        "--model-key": args.model_key,
        "--parallelism": args.parallelism,
        "--cluster-load": args.cluster_load,
    }
    if args.task is not None:
        if args.parallelism is None:
            raise UsageError("--parallelism is required with --task")
        target: Recommendation | TaskRef | None = _ref(args)
        recommendation_id = None
    else:
        for option, value in task_only.items():
            if value is not None:
                raise UsageError(f"{option} applies only with --task")
        if not args.recommendation_id.strip():
            raise UsageError("--recommendation-id must not be empty")
        target, recommendation_id = None, args.recommendation_id.strip()
    if not args.execution_id.strip():
        raise UsageError("--execution-id must not be empty")
    try:
        result = advisor.report(
            target,
            recommendation_id=recommendation_id,
            duration_seconds=duration,
            execution_id=args.execution_id.strip(),
            input_size=args.input_size,
            startup_seconds=args.startup_seconds,
            succeeded=succeeded,
            parallelism=args.parallelism,
            cluster_load=args.cluster_load,
        )
    except UnavailableError as error:
        _warn(f"fanout at {advisor.target} unreachable ({error.message}); report not delivered")
        return EXIT_UNREACHABLE if args.strict else EXIT_OK
    print(json.dumps(_jsonable(result), indent=2, sort_keys=True))
    return EXIT_OK


def _duration(args: argparse.Namespace) -> float:
    times = (args.started_at, args.finished_at)
    if args.duration_seconds is not None:
        if any(t is not None for t in times):
            raise UsageError(
                "--duration-seconds cannot be combined with --started-at/--finished-at"
            )
        value: float = args.duration_seconds
        return value
    if args.started_at is None or args.finished_at is None:
        missing = "--started-at" if args.started_at is None else "--finished-at"
        raise UsageError(
            f"{missing} is required (or give --duration-seconds instead of both times)"
        )
    try:
        return duration_between(args.started_at, args.finished_at)
    except ValueError as error:
        raise UsageError(f"--finished-at: {error}") from None


def _get_task(advisor: Advisor, args: argparse.Namespace) -> int:
    task = advisor.get_task(_ref(args))
    print(json.dumps(_jsonable(task), indent=2, sort_keys=True))
    return EXIT_OK


def _list_tasks(advisor: Advisor, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else args.namespace
    tasks = [_jsonable(t) for t in advisor.list_tasks(namespace, page_size=args.page_size)]
    print(json.dumps(tasks, indent=2, sort_keys=True))
    return EXIT_OK


# -- plumbing -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _write(path: Path, text: str) -> None:
    # No trailing newline: Argo takes an output parameter's file content verbatim.
    path.write_text(text, encoding="utf-8")


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            return args.token_file.read_text(encoding="utf-8").strip() or None
        except OSError as error:
            raise UsageError(
                f"--token-file: cannot read {args.token_file}: {error.strerror}"
            ) from None
    return os.environ.get("FANOUT_TOKEN", "").strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        # argparse exits for --help (0) and for bad options (2, message printed).
        return int(done.code) if isinstance(done.code, int) else EXIT_USAGE
    command = f"{PROG} {args.command}"
    try:
        with Advisor(
            args.target,
            namespace=args.namespace,
            timeout=args.timeout,
            retries=args.retries,
            tls=args.tls,
            root_certificates_file=args.root_certificates_file,
            certificate_file=args.certificate_file,
            private_key_file=args.private_key_file,
            token=_token(args),
            fallback=False,
        ) as advisor:
            handler: Callable[[Advisor, argparse.Namespace], int] = args.handler
            return handler(advisor, args)
    except UsageError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidArgumentError as error:
        where = f"--{error.field.replace('_', '-')}" if error.code is None and error.field else ""
        print(f"{command}: error: {where + ': ' if where else ''}{error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(f"{command}: error: fanout at {args.target} unreachable: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except FanoutError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; keep Python from failing again while
        # flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
