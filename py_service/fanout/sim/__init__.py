"""Simulated cluster, baselines, oracle and regret evaluation (issue 5).

`fanout.sim.cli.main` is `fanout simulate`; `fanout.sim.policies.register_policy` adds
a policy (e.g. fanout through the real server) to the comparison.
"""

from fanout.sim.evaluate import EvalSettings, ScenarioOutcome, best_width, run_scenario
from fanout.sim.policies import Context, Policy, register_policy
from fanout.sim.scenarios import Scenario, SimTask, all_scenarios
from fanout.sim.truth import TaskTruth

__all__ = [
    "Context",
    "EvalSettings",
    "Policy",
    "Scenario",
    "ScenarioOutcome",
    "SimTask",
    "TaskTruth",
    "all_scenarios",
    "best_width",
    "register_policy",
    "run_scenario",
]
