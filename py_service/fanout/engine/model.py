"""One task's model: phases, learning from reports and the decision (SPEC sections 3-5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fanout import _core
from fanout.engine.config import ConfigError, TaskConfig
from fanout.engine.gp import ResidualGP

F64 = NDArray[np.float64]

STATE_SCHEMA = 1
DRIFT_MISSES = 3  # SPEC 4.0: this report and the two before it
DRIFT_SIGMAS = 2.0
PRIOR_SD_FRACTION = 0.25  # SPEC 2: sigma before the GP has two points
# A GP on a handful of points interpolates them exactly and reports sd ~ 0; no real
# run repeats to the second, and with sd ~ 0 every report would count as a drift miss.
SD_FLOOR_FRACTION = 0.02


class Phase(StrEnum):
    """Where a task stands in SPEC section 3."""

    BASELINE = "baseline"
    PROBE = "probe"
    OPTIMIZE = "optimize"


class StateError(ValueError):
    """A stored model state is malformed; raised on load, for that task only."""


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One finished execution as reported: `(s, N, L, T)` plus a measured start-up."""

    parallelism: int
    duration_seconds: float
    input_size: float | None = None
    cluster_load: float = 0.0
    startup_seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parallelism, int) or isinstance(self.parallelism, bool):
            raise ConfigError("parallelism", f"must be a whole number, got {self.parallelism!r}")
        if self.parallelism < 1:
            raise ConfigError("parallelism", f"must be >= 1, got {self.parallelism}")
        _positive("duration_seconds", self.duration_seconds)
        if self.input_size is not None:
            _positive("input_size", self.input_size)
        if not math.isfinite(self.cluster_load) or self.cluster_load < 0:
            raise ConfigError("cluster_load", f"must be finite and >= 0, got {self.cluster_load}")
        if self.startup_seconds is not None and (
            not math.isfinite(self.startup_seconds) or self.startup_seconds < 0
        ):
            raise ConfigError(
                "startup_seconds", f"must be finite and >= 0, got {self.startup_seconds}"
            )


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be finite and > 0, got {value}")


@dataclass(frozen=True)
class Decision:
    """A recommendation and everything needed to explain it (SPEC 5.5).

    The candidate table is kept as arrays of shape (m,): `candidate_s`,
    `candidate_mean`, `candidate_sd`, `candidate_score`. Before the model can predict
    (phases BASELINE and PROBE) the table is empty and the prediction is NaN.
    """

    parallelism: int
    mean_seconds: float
    sd_seconds: float
    phase: Phase
    bounds: tuple[int, int]
    candidate_s: F64
    candidate_mean: F64
    candidate_sd: F64
    candidate_score: F64
    gamma: float
    cluster_load: float
    input_size_unknown: bool
    deadline_unreachable: bool
    model_version: int


@dataclass
class LearnedState:
    """Everything a task has learned; JSON-safe through `to_dict`.

    `window` rows are `[s, input_size or None, load, duration, startup or None]`
    (raw, so `gamma` follows `base_input_size`); `baselines` keeps `s = 1` rows past
    the window (SPEC 4.4).
    """

    t1: float | None = None
    base_input_size: float | None = None
    p: float | None = None
    k: float = 1.0
    c: float = 0.0
    window: list[list[float | None]] = field(default_factory=list)
    baselines: list[list[float | None]] = field(default_factory=list)
    miss_streak: int = 0
    miss_side: int = 0
    ones_streak: int = 0
    reprobe_wait: int = 10
    gp_theta: list[float] | None = None
    gp_version: int | None = None
    version: int = 0
    observations_total: int = 0
    last_drift: bool = False

    def to_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies every row and cost 2.6 ms a Recommend.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["window"] = [list(r) for r in self.window]
        data["baselines"] = [list(r) for r in self.baselines]
        data["gp_theta"] = None if self.gp_theta is None else list(self.gp_theta)
        data["schema"] = STATE_SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedState:
        """Validate stored JSON; a malformed row raises `StateError`, never runs code."""
        if data.get("schema") != STATE_SCHEMA:
            raise StateError(f"unsupported state schema {data.get('schema')!r}")
        try:
            state = cls(
                t1=_opt_float(data["t1"]),
                base_input_size=_opt_float(data["base_input_size"]),
                p=_opt_float(data["p"]),
                k=float(data["k"]),
                c=float(data["c"]),
                window=[_row(r) for r in data["window"]],
                baselines=[_row(r) for r in data["baselines"]],
                miss_streak=int(data["miss_streak"]),
                miss_side=int(data["miss_side"]),
                ones_streak=int(data["ones_streak"]),
                reprobe_wait=int(data["reprobe_wait"]),
                gp_theta=None if data["gp_theta"] is None else [float(v) for v in data["gp_theta"]],
                gp_version=None if data["gp_version"] is None else int(data["gp_version"]),
                version=int(data["version"]),
                observations_total=int(data["observations_total"]),
                last_drift=bool(data["last_drift"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed model state: {exc!r}") from exc
        checks = (
            state.t1 is None or (math.isfinite(state.t1) and state.t1 > 0),
            state.p is None or 0.0 <= state.p <= 1.0,
            0.0 <= state.k <= 3.0,
            math.isfinite(state.c) and state.c >= 0,
            state.base_input_size is None or state.base_input_size > 0,
            state.reprobe_wait >= 1,
        )
        if not all(checks):
            raise StateError("model state holds values out of range")
        return state


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _row(row: Any) -> list[float | None]:
    s, size, load, duration, startup = row
    parsed = [float(s), _opt_float(size), float(load), float(duration), _opt_float(startup)]
    if not (
        parsed[0] >= 1  # type: ignore[operator]
        and float(duration) > 0
        and float(load) >= 0
        and all(v is None or math.isfinite(v) for v in parsed)
    ):
        raise ValueError(f"observation row out of range: {row!r}")
    return parsed


class TaskModel:
    """The learned model of one task (or of several sharing a model key).

    `decide` recommends a width (and advances the re-probe counters, SPEC 5.1);
    `observe` learns from a finished run (SPEC 4). The state round-trips through
    `state_dict`/`from_dicts`, and a restored model decides exactly as the original.
    """

    def __init__(self, config: TaskConfig | None = None, state: LearnedState | None = None) -> None:
        self.config = config or TaskConfig()
        if state is None:
            state = LearnedState(
                t1=self.config.t1_seconds,
                base_input_size=self.config.base_input_size,
                p=self.config.p,
                c=self.config.startup_seconds,
                reprobe_wait=self.config.reprobe_after,
            )
        self.state = state
        self._gp: ResidualGP | None = None
        self._gp_dirty = True

    # -- persistence -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    @classmethod
    def from_dicts(cls, config: Mapping[str, Any], state: Mapping[str, Any] | None) -> TaskModel:
        """Restore from the registry's JSON columns (state None: a fresh model)."""
        task_config = TaskConfig.from_dict(config)
        return cls(task_config, None if state is None else LearnedState.from_dict(state))

    def clone(self) -> TaskModel:
        """An independent copy (the fitted GP, never changed in place, is shared)."""
        st = self.state
        copy = TaskModel(
            self.config,
            replace(
                st,
                window=[list(r) for r in st.window],
                baselines=[list(r) for r in st.baselines],
                gp_theta=None if st.gp_theta is None else list(st.gp_theta),
            ),
        )
        copy._gp, copy._gp_dirty = self._gp, self._gp_dirty
        return copy

    def reconfigure(self, config: TaskConfig) -> None:
        """Apply new configuration; seeds given in it overwrite what was learned."""
        old = self.config
        self.config = config
        st = self.state
        if config.t1_seconds is not None and config.t1_seconds != old.t1_seconds:
            st.t1 = config.t1_seconds
        if config.base_input_size is not None and config.base_input_size != old.base_input_size:
            st.base_input_size = config.base_input_size
        if config.p is not None and config.p != old.p:
            st.p = config.p
        if config.startup_seconds != old.startup_seconds and not self._measured_startups():
            st.c = config.startup_seconds
        if config.window < len(st.window):
            del st.window[: len(st.window) - config.window]
        st.version += 1
        self._gp_dirty = True

    # -- phase and prediction ------------------------------------------------------

    @property
    def phase(self) -> Phase:
        if self.state.t1 is None:
            return Phase.BASELINE
        if self.state.p is None:
            return Phase.PROBE
        return Phase.OPTIMIZE

    def gamma_of(self, input_size: float | None) -> tuple[float, bool]:
        """`gamma = N / N_base`, and whether the size was unknown (SPEC 1)."""
        if input_size is None:
            return 1.0, True
        base = self.state.base_input_size
        if base is None:
            return 1.0, False
        return input_size / base, False

    def _amdahl(self, s: F64, gamma: F64) -> F64:
        st = self.state
        assert st.t1 is not None and st.p is not None
        return _core.amdahl_time(s, gamma, t1=st.t1, p=st.p, c=st.c, k=st.k)

    def prepare(self) -> None:
        """Builds the GP posterior now instead of at the first prediction that needs it
        (a restored model builds it lazily)."""
        self._residual_gp()

    def _residual_gp(self) -> ResidualGP | None:
        """The posterior on the current window under the current theta, built lazily."""
        if self._gp_dirty:
            self._gp = self._fit_gp(theta=self.state.gp_theta)
            self._gp_dirty = False
        return self._gp

    def _fit_gp(self, *, theta: list[float] | None) -> ResidualGP | None:
        st = self.state
        if st.t1 is None or st.p is None or len(st.window) < 2:
            return None
        s, gamma, load, duration, _ = self._window_arrays()
        residual = duration - self._amdahl(s, gamma)  # SPEC 4.6, under current parameters
        return ResidualGP.fit(
            s,
            gamma,
            load,
            residual,
            theta=theta,
            restarts=self.config.gp_restarts,
            seed=self.config.seed,
        )

    def predict(self, s: F64, gamma: F64, load: F64) -> tuple[F64, F64]:
        """Predictive mean and sd of the run time, shape (m,) each (SPEC 2).

        NaN before the model knows `T1` and `p`.
        """
        if self.phase is not Phase.OPTIMIZE:
            nan = np.full(len(s), np.nan)
            return nan, nan.copy()
        amdahl = self._amdahl(s, gamma)
        gp = self._residual_gp()
        if gp is None:
            return amdahl, self._prior_sd(amdahl)
        mu, sd = gp.predict(s, gamma, load)
        return amdahl + mu, np.maximum(sd, SD_FLOOR_FRACTION * amdahl)

    def _prior_sd(self, amdahl: F64) -> F64:
        durations = [row[3] for row in self.state.window]
        if len(durations) >= 2:
            spread = float(np.std(np.asarray(durations, dtype=np.float64)))
            if spread > 0:
                return np.full(len(amdahl), spread)
        return PRIOR_SD_FRACTION * amdahl

    # -- decision (SPEC 5) -----------------------------------------------------------

    def decide(
        self,
        input_size: float | None = None,
        cluster_load: float = 0.0,
        *,
        urgency: float | None = None,
        resource_exponent: float | None = None,
        deadline_seconds: float | None = None,
        confidence: float | None = None,
        min_parallelism: int | None = None,
        max_parallelism: int | None = None,
        strategy: str | None = None,
    ) -> Decision:
        """Recommend a width; advances the re-probe counters (SPEC 5.1)."""
        decision, counters = self.plan(
            input_size,
            cluster_load,
            urgency=urgency,
            resource_exponent=resource_exponent,
            deadline_seconds=deadline_seconds,
            confidence=confidence,
            min_parallelism=min_parallelism,
            max_parallelism=max_parallelism,
            strategy=strategy,
        )
        self.state.ones_streak, self.state.reprobe_wait = counters
        return decision

    def plan(
        self,
        input_size: float | None = None,
        cluster_load: float = 0.0,
        *,
        urgency: float | None = None,
        resource_exponent: float | None = None,
        deadline_seconds: float | None = None,
        confidence: float | None = None,
        min_parallelism: int | None = None,
        max_parallelism: int | None = None,
        strategy: str | None = None,
    ) -> tuple[Decision, tuple[int, int]]:
        """`decide` without changing the model: the decision and the re-probe counters
        `(ones_streak, reprobe_wait)` it leaves. Safe on a model shared by threads."""
        cfg = self.config
        overrides = {
            name: value
            for name, value in (
                ("urgency", urgency),
                ("resource_exponent", resource_exponent),
                ("confidence", confidence),
                ("min_parallelism", min_parallelism),
                ("max_parallelism", max_parallelism),
                ("strategy", strategy),
            )
            if value is not None
        }
        # Validating a whole new config is a sizeable share of a decision's time.
        request = cfg.updated(**overrides) if overrides else cfg
        if input_size is not None:
            _positive("input_size", input_size)
        if not math.isfinite(cluster_load) or cluster_load < 0:
            raise ConfigError("cluster_load", f"must be finite and >= 0, got {cluster_load}")
        if deadline_seconds is not None:
            _positive("deadline_seconds", deadline_seconds)
        gamma, unknown = self.gamma_of(input_size)
        lo_limit, hi_limit = request.min_parallelism, request.max_parallelism
        phase = self.phase
        st = self.state
        unchanged = (st.ones_streak, st.reprobe_wait)
        if phase is Phase.BASELINE:
            return self._fixed(1, phase, request, gamma, cluster_load, unknown), unchanged
        if phase is Phase.PROBE:
            probe = max(2, cfg.probe_parallelism)
            return self._fixed(probe, phase, request, gamma, cluster_load, unknown), unchanged
        if st.ones_streak >= st.reprobe_wait and lo_limit <= 2 <= hi_limit:
            # SPEC 5.1 re-probe: a model stuck at s = 1 learns nothing more about p.
            decision = self._fixed(
                2, Phase.PROBE, request, gamma, cluster_load, unknown, predict=True
            )
            return decision, (0, st.reprobe_wait * 2)
        decision = self._optimize(request, gamma, cluster_load, unknown, deadline_seconds)
        if decision.parallelism == 1:
            return decision, (st.ones_streak + 1, st.reprobe_wait)
        return decision, (0, cfg.reprobe_after)

    def _fixed(
        self,
        s: int,
        phase: Phase,
        request: TaskConfig,
        gamma: float,
        load: float,
        unknown: bool,
        *,
        predict: bool = False,
    ) -> Decision:
        s = min(max(s, request.min_parallelism), request.max_parallelism)
        cand = np.array([float(s)])
        if predict:
            mean, sd = self.predict(cand, np.array([gamma]), np.array([load]))
        else:
            mean = sd = np.array([np.nan])
        return Decision(
            parallelism=s,
            mean_seconds=float(mean[0]),
            sd_seconds=float(sd[0]),
            phase=phase,
            bounds=(s, s),
            candidate_s=cand if predict else np.empty(0),
            candidate_mean=mean if predict else np.empty(0),
            candidate_sd=sd if predict else np.empty(0),
            candidate_score=_core.expected_score(
                cand,
                mean,
                sd,
                urgency=request.urgency,
                resource_exponent=request.resource_exponent,
            )
            if predict
            else np.empty(0),
            gamma=gamma,
            cluster_load=load,
            input_size_unknown=unknown,
            deadline_unreachable=False,
            model_version=self.state.version,
        )

    def _optimize(
        self,
        request: TaskConfig,
        gamma: float,
        load: float,
        unknown: bool,
        deadline: float | None,
    ) -> Decision:
        st = self.state
        assert st.p is not None
        lo, hi = _core.search_bounds(
            st.p,
            strategy=request.strategy,
            rule=request.bound_rule,
            urgency=request.urgency,
            resource_exponent=request.resource_exponent,
            eta=request.eta,
            min_parallelism=request.min_parallelism,
            max_parallelism=request.max_parallelism,
        )
        # SPEC 5.1 extension: the GP may show the score still falling past the
        # Amdahl bound, but it is not trusted beyond the widest run it has seen.
        widest_seen = int(max((row[0] or 1.0 for row in st.window), default=1.0))
        top = max(hi, min(widest_seen, request.max_parallelism))
        cand = np.arange(lo, top + 1, dtype=np.float64)
        gammas = np.full(len(cand), gamma)
        loads = np.full(len(cand), load)
        mean, sd = self.predict(cand, gammas, loads)
        a, b = request.urgency, request.resource_exponent
        if top > hi:
            scores = _core.expected_score(cand, mean, sd, urgency=a, resource_exponent=b)
            keep = hi - lo + 1
            while keep < len(cand) and scores[keep] < scores[keep - 1]:
                keep += 1
            cand, mean, sd = cand[:keep], mean[:keep], sd[:keep]
            hi = int(cand[-1])
        index, scores, deadline_met = _core.choose(
            cand,
            mean,
            sd,
            urgency=a,
            resource_exponent=b,
            deadline=deadline,
            confidence=request.confidence,
        )
        return Decision(
            parallelism=int(cand[index]),
            mean_seconds=float(mean[index]),
            sd_seconds=float(sd[index]),
            phase=Phase.OPTIMIZE,
            bounds=(lo, hi),
            candidate_s=cand,
            candidate_mean=mean,
            candidate_sd=sd,
            candidate_score=scores,
            gamma=gamma,
            cluster_load=load,
            input_size_unknown=unknown,
            deadline_unreachable=not deadline_met,
            model_version=st.version,
        )

    # -- learning (SPEC 4) -------------------------------------------------------------

    def observe(self, obs: Observation, *, refit: bool = True) -> bool:
        """Learn from one successful run; returns whether drift was detected.

        With `refit=False` the GP keeps its hyper-parameters (only its posterior
        moves to the new window); call `refit()` later, off the request path. The
        drift check needs the model as it stood after the previous report, so a
        refit that has not happened yet is done first: the result never depends on
        when a background refit ran, and equals a serial replay with refits.
        """
        st = self.state
        cfg = self.config
        if st.gp_version != st.version:
            self.refit()
        drift = self._drift_check(obs)  # step 0, against the model as it stood
        if st.base_input_size is None and obs.input_size is not None:
            st.base_input_size = obs.input_size
        row: list[float | None] = [
            float(obs.parallelism),
            obs.input_size,
            float(obs.cluster_load),
            float(obs.duration_seconds),
            obs.startup_seconds,
        ]
        if drift:
            del st.window[: -(DRIFT_MISSES - 1)]
        st.window.append(row)  # step 1
        del st.window[: max(0, len(st.window) - cfg.window)]
        if obs.parallelism == 1:
            st.baselines.append(row)
            del st.baselines[: max(0, len(st.baselines) - cfg.window)]
        self._relearn()
        st.version += 1
        st.observations_total += 1
        st.last_drift = drift
        self._gp_dirty = True
        if refit:
            self.refit()
        return drift

    @property
    def needs_refit(self) -> bool:
        """Whether the GP hyper-parameters lag behind the window."""
        return self.state.gp_version != self.state.version

    def refit(self) -> None:
        """Re-optimise the GP hyper-parameters on the current window (SPEC 4.6)."""
        gp = self._fit_gp(theta=None)
        self.state.gp_theta = None if gp is None else gp.theta_
        self.state.gp_version = self.state.version
        self._gp = gp
        self._gp_dirty = False

    def adopt_refit(self, refitted: TaskModel) -> None:
        """Takes the GP of `refitted`, a copy of this model at the same version refitted
        elsewhere; everything else (such as re-probe counters moved meanwhile) stays."""
        if refitted.state.version != self.state.version:
            raise ValueError("a refit applies only to the version it was fitted at")
        self.state.gp_theta = refitted.state.gp_theta
        self.state.gp_version = refitted.state.gp_version
        self._gp, self._gp_dirty = refitted._gp, refitted._gp_dirty

    def _measured_startups(self) -> list[float]:
        return [float(r[4]) for r in self.state.window if r[4] is not None]

    def _relearn(self) -> None:
        """Steps 2-5: every parameter recomputed over the window."""
        st = self.state
        startups = self._measured_startups()
        if startups:
            st.c = float(np.mean(startups))  # step 2
        s, gamma, _, duration, _ = self._window_arrays()
        k = _core.fit_k(s, gamma, duration, c=st.c)  # step 3
        if k is not None:
            st.k = k
        t1 = _core.baseline_t1(s, gamma, duration, c=st.c, k=st.k)  # step 4
        if t1 is None and st.baselines:
            bs, bg, _, bd, _ = self._arrays(st.baselines)
            t1 = _core.baseline_t1(bs, bg, bd, c=st.c, k=st.k)
        if t1 is not None:
            st.t1 = t1
        parallel = s > 1
        if st.t1 is not None and parallel.any():  # step 5
            p_cur = _core.p_current(
                s[parallel], gamma[parallel], duration[parallel], t1=st.t1, c=st.c, k=st.k
            )
            st.p = _core.replay_p(p_cur, alpha=self.config.alpha)

    def _drift_check(self, obs: Observation) -> bool:
        st = self.state
        if self.phase is not Phase.OPTIMIZE:
            return False
        gamma, _ = self.gamma_of(obs.input_size)
        mean, sd = self.predict(
            np.array([float(obs.parallelism)]), np.array([gamma]), np.array([obs.cluster_load])
        )
        miss = obs.duration_seconds - float(mean[0])
        if abs(miss) <= DRIFT_SIGMAS * float(sd[0]):
            st.miss_streak, st.miss_side = 0, 0
            return False
        side = 1 if miss > 0 else -1
        st.miss_streak = st.miss_streak + 1 if side == st.miss_side else 1
        st.miss_side = side
        if st.miss_streak >= DRIFT_MISSES:
            st.miss_streak, st.miss_side = 0, 0
            return True
        return False

    def _window_arrays(self) -> tuple[F64, F64, F64, F64, F64]:
        return self._arrays(self.state.window)

    def _arrays(self, rows: list[list[float | None]]) -> tuple[F64, F64, F64, F64, F64]:
        n = len(rows)
        s = np.empty(n)
        gamma = np.empty(n)
        load = np.empty(n)
        duration = np.empty(n)
        startup = np.empty(n)
        for i, (rs, size, rl, rt, rc) in enumerate(rows):
            s[i] = rs
            gamma[i] = self.gamma_of(size)[0]
            load[i] = rl
            duration[i] = rt
            startup[i] = np.nan if rc is None else rc
        return s, gamma, load, duration, startup

    def reset(self) -> None:
        """Forget what was learned; configured seeds apply again (ResetTask)."""
        version = self.state.version
        self.state = TaskModel(self.config).state
        self.state.version = version + 1
        self._gp = None
        self._gp_dirty = True

    def summary(self) -> dict[str, Any]:
        """The learned parameters for status answers."""
        st = self.state
        return {
            "phase": self.phase,
            "t1_seconds": st.t1,
            "p": st.p,
            "k": st.k,
            "startup_seconds": st.c,
            "base_input_size": st.base_input_size,
            "window_size": len(st.window),
            "window_capacity": self.config.window,
            "observations_total": st.observations_total,
            "version": st.version,
            "drift_detected": st.last_drift,
            "refit_pending": self.needs_refit,
        }
