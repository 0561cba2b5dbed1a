"""`python -m fanout.sim` runs `fanout simulate`."""

from fanout.sim.cli import main

raise SystemExit(main())
