"""Privacy accounting with dp-accounting over the mechanism a site actually applies, per record.

A site's release is built from Gaussian-noised sums of per-record clipped contributions (L2 norm at
most ``C``, noise std ``sigma C`` on each sum). Windows are cut by *slot position* and the example
count that normalises a sum is the number of slots, so the neighbouring relation is **zero-out**
(dp-accounting's ``REPLACE_SPECIAL``, Kairouz et al. 2021, Definition 1.1): a record is replaced by
a null record that contributes zero. Then one record moves each noised sum by at most ``C``, i.e.
noise multiplier ``sigma`` per sum. (Under replace-one adjacency the sensitivity would be ``2C``.)

A :class:`Mechanism` names what one release does (``steps`` noised sums, each over a Poisson sample
of rate ``sampling_rate``) and how many releases one record can reach (``releases_per_record``);
:func:`epsilon` composes its events with the RDP or the PLD accountant, and
:func:`calibrate` picks the smallest ``sigma`` that meets a per-record target by either.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp
from dp_accounting.rdp import rdp_privacy_accountant

from streamfed.errors import PrivacyBudgetExceeded
from streamfed.topology.spec import PrivacySpec

log = logging.getLogger(__name__)

RELATION = dp_accounting.NeighboringRelation.REPLACE_SPECIAL
RELATION_NAME = "zero-out (a record replaced by a null record; dp-accounting REPLACE_SPECIAL)"
# Integer orders: dp-accounting's fractional orders below 2 do not converge for subsampled events and
# log a warning per order; integer orders lose nothing measurable at the epsilons used here.
RDP_ORDERS = [*range(2, 257), 320, 384, 512, 768, 1024]
# PLD discretisation: a coarser grid is still a valid (pessimistic) bound, and 10x faster than the default.
PLD_INTERVAL = 1e-3
Method = Literal["rdp", "pld"]
MECHANISMS = ("window_sum", "dp_sgd")


@dataclass(frozen=True)
class Mechanism:
    """What one release is, for the accountant.

    ``window_sum``: one noised sum of the window's clipped per-record gradients (``steps = 1``,
    ``sampling_rate = 1``, each record in one release). ``dp_sgd``: ``steps`` noised sums per
    release, each over a Poisson sample (rate ``sampling_rate``) of the records of the last
    ``releases_per_record`` windows.
    """

    kind: str
    noise_multiplier: float
    clip_norm: float
    steps: int = 1
    sampling_rate: float = 1.0
    releases_per_record: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MECHANISMS:
            raise ValueError(f'unknown mechanism "{self.kind}"; valid: {", ".join(MECHANISMS)}')
        if self.noise_multiplier <= 0 or self.clip_norm <= 0:
            raise ValueError("noise multiplier and clip norm must be positive")
        if self.steps < 1 or self.releases_per_record < 1 or not 0 < self.sampling_rate <= 1:
            raise ValueError("steps and releases per record must be >= 1, sampling rate in (0, 1]")

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    def with_sigma(self, sigma: float) -> Mechanism:
        return Mechanism(self.kind, sigma, self.clip_norm, self.steps, self.sampling_rate, self.releases_per_record)

    def release_event(self) -> dp_accounting.DpEvent:
        """One release: ``steps`` Gaussian sums, each Poisson-subsampled unless the rate is 1."""
        return _release_event(self.noise_multiplier, self.sampling_rate, self.steps)

    def record_event(self) -> dp_accounting.DpEvent:
        """Everything one record can reach: its window's release and the later ones it stays in."""
        return dp_accounting.SelfComposedDpEvent(self.release_event(), self.releases_per_record)


def _release_event(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    gauss = dp_accounting.GaussianDpEvent(sigma)
    step = gauss if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)
    return step if steps == 1 else dp_accounting.SelfComposedDpEvent(step, steps)


def _accountant(method: Method) -> dp_accounting.PrivacyAccountant:
    if method == "rdp":
        return rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=RELATION)
    if method == "pld":
        return pld.PLDAccountant(neighboring_relation=RELATION, value_discretization_interval=PLD_INTERVAL)
    raise ValueError(f'unknown accounting method "{method}"; valid: rdp, pld')


# Above this RDP epsilon the PLD is not built (its support grows without bound as noise vanishes, to
# gigabytes), and the PLD figure is the RDP bound: still a valid upper bound, and no real protection.
PLD_MAX_EPSILON = 64.0


def epsilon(event: dp_accounting.DpEvent, delta: float, method: Method = "rdp") -> float:
    """Epsilon at ``delta`` of ``event`` under zero-out adjacency, by the RDP or the PLD accountant."""
    if method == "pld":
        bound = epsilon(event, delta, "rdp")
        if bound > PLD_MAX_EPSILON:
            return bound
    acc = _accountant(method)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@dataclass(frozen=True)
class Calibration:
    """The noise multiplier chosen for a per-record target, with both accountants' epsilon at it."""

    sigma: float
    method: str  # the accountant that allowed the smaller sigma
    epsilon_rdp: float
    epsilon_pld: float

    @property
    def epsilon(self) -> float:
        """The guarantee: both are valid upper bounds, so the smaller one holds."""
        return min(self.epsilon_rdp, self.epsilon_pld)


@functools.cache
def _dp_accounting_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dp-accounting")
    except PackageNotFoundError:
        return "unknown"


def _cache_file(key: dict[str, object]) -> Path:
    import hashlib

    root = Path(
        os.environ.get("STREAMFED_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "streamfed"
    )
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root.expanduser() / "calibration" / f"{digest}.json"


@functools.lru_cache(maxsize=256)
def _calibrate(kind: str, clip: float, steps: int, q: float, k: int, target: float, delta: float) -> Calibration:
    """The calibration, from the disk cache when this exact search was done before on this machine.

    Every process of a deployment (each site, the aggregator, ``topology validate``) needs the same
    sigma, and the search takes seconds; the cache keeps the sigma found, keyed by every input and
    dp-accounting's version. A cached sigma is never trusted as such: both accountants' epsilon are
    computed again at it, and it is used only if they meet the target, so what is printed and
    applied is always dp-accounting's figure for the mechanism applied.
    """
    key = {"kind": kind, "clip": clip, "steps": steps, "q": q, "k": k, "target": target, "delta": delta,
           "dp_accounting": _dp_accounting_version(), "format": 1}  # fmt: skip
    path = _cache_file(key)
    mech = Mechanism(kind, 1.0, clip, steps, q, k)
    try:
        doc = json.loads(path.read_text())
        ev = mech.with_sigma(float(doc["sigma"])).record_event()
        cal = Calibration(float(doc["sigma"]), str(doc["method"]), epsilon(ev, delta, "rdp"), epsilon(ev, delta, "pld"))
        if cal.epsilon <= target * (1 + 1e-9):
            return cal
        log.warning(
            "cached calibration %s does not meet epsilon %g at delta %g: calibrating again", path, target, delta
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cal = _search(mech, target, delta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**key, "sigma": cal.sigma, "method": cal.method}))
        tmp.replace(path)
    except OSError as exc:
        log.debug("calibration cache not written: %s", exc)
    return cal


def _search(mech: Mechanism, target: float, delta: float) -> Calibration:

    def event(z: float) -> dp_accounting.DpEvent:
        return mech.with_sigma(z).record_event()

    found = {
        "rdp": float(
            dp_accounting.calibrate_dp_mechanism(
                functools.partial(_accountant, "rdp"),
                event,
                target,
                delta,
                dp_accounting.LowerEndpointAndGuess(1e-2, 1.0),
                tol=1e-4,
            )
        )
    }
    # PLD is tighter, so its sigma lies below RDP's; searching from tiny sigmas would build huge PLDs
    # (minutes), so bracket it between a third of RDP's sigma and RDP's.
    low = found["rdp"] / 3.0
    if epsilon(event(low), delta, "pld") > target:
        found["pld"] = float(
            dp_accounting.calibrate_dp_mechanism(
                functools.partial(_accountant, "pld"),
                event,
                target,
                delta,
                dp_accounting.ExplicitBracketInterval(low, found["rdp"]),
                tol=1e-4,
            )
        )
    method = min(found, key=lambda m: found[m])
    ev = event(found[method])
    return Calibration(found[method], method, epsilon(ev, delta, "rdp"), epsilon(ev, delta, "pld"))


def calibrate(mechanism: Mechanism, target_epsilon: float, delta: float) -> Calibration:
    """The smallest noise multiplier, by the tighter of RDP and PLD, for which one record's releases
    (``mechanism.record_event``) cost at most ``target_epsilon`` at ``delta``."""
    m = mechanism
    return _calibrate(m.kind, m.clip_norm, m.steps, m.sampling_rate, m.releases_per_record, target_epsilon, delta)


def mechanism_of(spec: PrivacySpec, sigma: float = 1.0) -> Mechanism:
    """The topology's mechanism (with noise multiplier ``sigma``)."""
    if spec.mechanism == "window_sum":
        return Mechanism("window_sum", sigma, spec.clip_norm)
    return Mechanism("dp_sgd", sigma, spec.clip_norm, spec.steps, spec.sampling_rate, spec.max_updates_per_record)


def resolve(spec: PrivacySpec) -> tuple[Mechanism, Calibration]:
    """The mechanism with its noise multiplier: ``spec.noise_multiplier`` if given, else calibrated
    from the per-record target ``spec.epsilon``; and both accountants' per-record epsilon."""
    mech = mechanism_of(spec)
    if spec.noise_multiplier is not None:
        mech = mech.with_sigma(spec.noise_multiplier)
        event = mech.record_event()
        cal = Calibration(
            spec.noise_multiplier, "given", epsilon(event, spec.delta, "rdp"), epsilon(event, spec.delta, "pld")
        )
        return mech, cal
    cal = calibrate(mech, spec.epsilon, spec.delta)
    return mech.with_sigma(cal.sigma), cal


def resolve_noise_multiplier(spec: PrivacySpec) -> float:
    return resolve(spec)[1].sigma


@dataclass(frozen=True)
class Release:
    """One ledger entry: a release and the mechanism it applied."""

    sequence: int
    created_ms: int
    sigma: float
    clip_norm: float
    num_examples: int
    mechanism: str = "window_sum"
    steps: int = 1
    sampling_rate: float = 1.0

    def event(self) -> dp_accounting.DpEvent:
        return _release_event(self.sigma, self.sampling_rate, self.steps)


def _key(r: Release) -> tuple[float, float, int]:
    return (r.sigma, r.sampling_rate, r.steps)


@functools.lru_cache(maxsize=64)
def _rdp_curve(sigma: float, q: float, steps: int) -> tuple[float, ...] | None:
    """The RDP of one release at each of ``RDP_ORDERS`` (additive under composition), or None when
    this dp-accounting keeps it elsewhere."""
    acc = rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=RELATION)
    acc.compose(_release_event(sigma, q, steps))
    curve = getattr(acc, "_rdp", None)
    return None if curve is None else tuple(float(v) for v in curve)


def releases_epsilon(releases: list[Release], delta: float, method: Method = "rdp") -> float:
    """Epsilon of the composition of ``releases`` (a record that reached every one of them)."""
    return groups_epsilon(Counter(_key(r) for r in releases), delta, method)


def groups_epsilon(groups: Counter[tuple[float, float, int]], delta: float, method: Method = "rdp") -> float:
    """Epsilon of ``n`` releases of each mechanism (sigma, q, steps) in ``groups``, composed."""
    groups = +groups  # without the zero counts
    if not groups:
        return 0.0
    if method == "rdp":
        curves = {k: _rdp_curve(*k) for k in groups}
        if all(c is not None for c in curves.values()):
            # RDP composes by addition: n copies of a release cost n times its curve
            total = sum(n * np.asarray(curves[k]) for k, n in groups.items())  # the same sums, order by order
            return float(rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, list(total), delta)[0])
    events = [dp_accounting.SelfComposedDpEvent(_release_event(s, q, t), n) for (s, q, t), n in sorted(groups.items())]
    return epsilon(dp_accounting.ComposedDpEvent(events), delta, method)


class PrivacyLedger:
    """Every release a site made, persisted as JSON lines so a restart never forgets what was spent.

    ``spent`` is the site's lifetime epsilon (RDP): the loss of a hypothetical record that reached
    every release, the quantity a lifetime budget is checked against. One real record reaches at most
    ``releases_per_record`` releases (see :class:`Mechanism`).
    """

    def __init__(self, delta: float, budget_epsilon: float | None = None, path: Path | None = None) -> None:
        self.delta = delta
        self.budget_epsilon = budget_epsilon
        self.path = path
        self.releases: list[Release] = []
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.releases.append(Release(**json.loads(line)))
            log.info("privacy ledger %s: %d earlier releases", path, len(self.releases))
        self._groups = Counter(_key(r) for r in self.releases)  # kept as releases come: O(1) per release
        self._spent = groups_epsilon(self._groups, delta)
        self._checked: tuple[tuple[int, tuple[float, float, int]], float] | None = None

    @property
    def spent(self) -> float:
        """Lifetime epsilon at ``delta`` over all releases so far (RDP)."""
        return self._spent

    def remaining(self) -> float | None:
        return None if self.budget_epsilon is None else max(0.0, self.budget_epsilon - self._spent)

    def check(self, release: Release) -> float:
        """Epsilon after ``release``; raises :class:`PrivacyBudgetExceeded` past the budget."""
        after = self._after(release)
        if self.budget_epsilon is not None and after > self.budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"release would spend epsilon {after:.3f} > budget {self.budget_epsilon:.3f} (delta {self.delta:g})"
            )
        return after

    def record(self, release: Release, durable: bool = True) -> float:
        """Append ``release`` and return the lifetime epsilon after it.

        ``durable`` (the default) fsyncs the line before returning. With ``durable=False`` the line
        is only handed to the operating system: call :meth:`sync` before the release leaves.
        """
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(asdict(release)) + "\n")
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
        after = self._after(release)
        self.releases.append(release)
        self._groups[_key(release)] += 1
        self._spent = after
        self._checked = None
        return self._spent

    def sync(self) -> None:
        """fsync the ledger: every line :meth:`record` wrote before this call is durable when it returns.

        Thread-safe against :meth:`record` (an fsync covers the whole file, whichever descriptor
        wrote it), so a site can make one release durable while it goes on learning.
        """
        if self.path is None or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _after(self, release: Release) -> float:
        """Lifetime epsilon with ``release`` added; the last answer is kept for the record that follows
        its check (an RDP evaluation costs milliseconds)."""
        key = (len(self.releases), _key(release))
        if self._checked is not None and self._checked[0] == key:
            return self._checked[1]
        groups = self._groups.copy()
        groups[_key(release)] += 1
        after = groups_epsilon(groups, self.delta)
        self._checked = (key, after)
        return after


def now_ms() -> int:
    return int(time.time() * 1000)
