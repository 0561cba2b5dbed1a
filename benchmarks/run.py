"""`make bench`: each suite prints its table; each group ends with one JSON line of figures.

The engine's line (issue 2 figures) comes first, the service's line (issue 3) last.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

GROUPS = (("engine", ("bench_core", "bench_engine")), ("service", ("bench_service",)))


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for group, suites in GROUPS:
        figures: dict[str, float] = {}
        for name in suites:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                print(f"({name} not present)")
                continue
            print(f"\n## {group}: {name}")
            figures.update(module.run())
        print()
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
