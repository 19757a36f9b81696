"""Candidate simulations as Ray tasks (``kvcalc size --ray [ADDRESS]``; the ``kvcalc[ray]``
extra).

The search (:mod:`.search`) hands a round of (configuration, replicas) pairs to the runner; here
each pair is one Ray task running the same pure function as a local worker process
(:func:`.search.worker_evaluate`), with the search's context (the model, the arrivals, the
objectives) put in Ray's object store once. Results come back in the order the pairs were
given, so the answer is the local run's, figure for figure.

``--ray`` alone starts (or joins, through ``RAY_ADDRESS``) a Ray on this machine; ``--ray
ADDRESS`` connects to a running cluster (``ray://head:10001`` through Ray Client, or ``auto`` on
a cluster node). The workers need kvcalc installed at the same version, and the model's config
is sent with the context, so a local ``--model path/config.json`` need not exist on them.
"""

from __future__ import annotations

from ..errors import UsageError

_SETUPS: dict = {}


def _evaluate(ctx, key, c, replicas):
    from .search import worker_evaluate

    setups = _SETUPS.setdefault(key, {})
    if len(_SETUPS) > 4:                     # a long-lived worker serving several searches
        for old in list(_SETUPS)[:-4]:
            del _SETUPS[old]
    return worker_evaluate(ctx, setups, c, replicas)


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'kvcalc[ray]'") from None
        self.ray = ray
        self.address = address
        self.num_cpus = num_cpus
        self._started = False
        self._ref = None
        self._remote = None
        self._key = None

    def start(self, ctx) -> None:
        import uuid

        ray = self.ray
        if not ray.is_initialized():
            kwargs = {"ignore_reinit_error": True, "log_to_driver": False,
                      "include_dashboard": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(**kwargs)
            except Exception as exc:            # noqa: BLE001 - Ray's own errors, in one line
                raise UsageError(f"--ray: cannot start or reach Ray"
                                 f"{' at ' + self.address if self.address else ''}: "
                                 f"{type(exc).__name__}: {exc}") from None
            self._started = True
        self._ref = ray.put(ctx)
        self._key = uuid.uuid4().hex
        self._remote = ray.remote(num_cpus=1)(_evaluate)

    def map(self, items):
        if not items:
            return []
        refs = [self._remote.remote(self._ref, self._key, c, r) for c, r in items]
        return self.ray.get(refs)

    def close(self) -> None:
        self._ref = None
        if self._started:
            self.ray.shutdown()
            self._started = False

    def describe(self) -> dict:
        return {"runner": "ray", "address": self.address or "local"}
