"""The capacity model of docs/scaling.md: what a rate of jobs needs, from the CPU time per job that
`python -m jetdag.bench` measures for each kind of process.

A scheduler replica and a worker process each run one event loop: about one core at most. A shard is owned by
one replica, and an execution lives in one shard, so one execution is driven by one core. nats-server uses all
the cores of its machine; at R3 every write costs CPU on the stream leader and two followers. The model adds up
the CPU time the measured costs ask for at a rate, leaves headroom (`utilisation`), and says which resource
runs out first. It is arithmetic on measurements, not a promise: it ignores network and disk limits, which the
bench on one machine cannot reach.

`python -m jetdag.capacity` prints the tables of docs/scaling.md; tests/test_capacity.py keeps the document
equal to them and checks the model against the measured runs.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MEASURED", "SCALING", "Costs", "Plan", "Profile", "plan", "render", "tables", "throughput"]

SCALING = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


@dataclass(frozen=True)
class Costs:
    """CPU milliseconds per job, as the bench's "CPU ms per job" table gives them."""

    scheduler: float
    worker: float
    """A worker's own work per job (fetch, report, ack), without the handler's."""
    nats: float
    """Summed over the cluster's nodes."""
    gateway: float

    @property
    def total(self) -> float:
        return self.scheduler + self.worker + self.nats + self.gateway


@dataclass(frozen=True)
class Profile:
    costs: Costs
    w3_jobs_s: float
    """The jobs/s the same runs measured for W3."""

    @property
    def cores_used(self) -> float:
        """How many cores the run kept busy: what the machine, shared with others, gave it."""
        return self.w3_jobs_s * self.costs.total / 1000.0


# W3 (10 x 500 noop jobs), `python -m jetdag.bench --workloads W1,W3 --repeats 3 --warmup 1`; docs/scaling.md
# says when and how. Medians of the 3 measured runs of each.
MEASURED: dict[str, Profile] = {
    "R1": Profile(Costs(scheduler=0.144, worker=0.150, nats=0.072, gateway=0.028), w3_jobs_s=2422),
    "R1, sync always": Profile(Costs(scheduler=0.220, worker=0.240, nats=0.316, gateway=0.056), w3_jobs_s=1144),
    "R3": Profile(Costs(scheduler=0.216, worker=0.272, nats=0.808, gateway=0.048), w3_jobs_s=680),
    "R3, sync always": Profile(Costs(scheduler=0.218, worker=0.280, nats=1.316, gateway=0.058), w3_jobs_s=626),
}


def throughput(cores: float, costs: Costs) -> float:
    """Jobs/s when every process shares `cores` (the one-machine bench): the cores divided by the CPU per job."""
    return cores * 1000.0 / costs.total


@dataclass(frozen=True)
class Plan:
    rate: float
    scheduler_replicas: int
    shards: int
    worker_cores: int
    nats_nodes: int
    nats_cores_per_node: int
    gateway_cores: int
    one_execution_max: float
    """Jobs/s one execution can reach: its owner replica's core."""


def plan(rate: float, costs: Costs, *, handler_ms: float = 0.0, utilisation: float = 0.7, nodes: int = 3) -> Plan:
    """What `rate` jobs/s needs at `costs`, each resource kept at `utilisation` of its cores; `handler_ms` is the
    CPU a handler spends per job (0 for the `noop` jobs the costs were measured with)."""

    def cores(ms_per_job: float) -> int:
        return max(1, math.ceil(rate * ms_per_job / 1000.0 / utilisation))

    replicas = cores(costs.scheduler)
    return Plan(
        rate=rate,
        scheduler_replicas=replicas,
        # Each replica needs a shard of its own to do anything; a few more than replicas spread evenly.
        shards=max(8, 1 << math.ceil(math.log2(replicas))),
        worker_cores=cores(costs.worker + handler_ms),
        nats_nodes=nodes,
        nats_cores_per_node=max(1, math.ceil(rate * costs.nats / 1000.0 / utilisation / nodes)),
        gateway_cores=cores(costs.gateway),
        one_execution_max=1000.0 * utilisation / costs.scheduler,
    )


def tables() -> str:
    """The generated part of docs/scaling.md."""
    lines = [
        "| profile | CPU ms per job: scheduler | worker | nats (all nodes) | gateway | jobs/s per scheduler core "
        "| jobs/s per worker core (noop) | measured W3 jobs/s | cores it kept busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in MEASURED.items():
        c = m.costs
        lines.append(
            f"| {name} | {c.scheduler:.3f} | {c.worker:.3f} | {c.nats:.3f} | {c.gateway:.3f} "
            f"| {1000 / c.scheduler:,.0f} | {1000 / c.worker:,.0f} | {m.w3_jobs_s:,.0f} | {m.cores_used:.2f} |"
        )
    lines += [
        "",
        "| jobs/s | profile | scheduler replicas (shards) | worker cores (noop / 10 ms handlers) "
        "| NATS nodes x cores | gateway cores | one execution at most |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rate in (1_000, 10_000, 100_000):
        for name in ("R3", "R3, sync always"):
            p = plan(rate, MEASURED[name].costs)
            heavy = plan(rate, MEASURED[name].costs, handler_ms=10.0)
            lines.append(
                f"| {rate:,} | {name} | {p.scheduler_replicas} ({p.shards}) | {p.worker_cores:,} / "
                f"{heavy.worker_cores:,} | {p.nats_nodes} x {p.nats_cores_per_node} | {p.gateway_cores} "
                f"| {p.one_execution_max:,.0f} jobs/s |"
            )
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- capacity:start -->\n)(.*?)(<!-- capacity:end -->)", re.DOTALL)


def render(text: str) -> str:
    """`text` (docs/scaling.md) with its generated block replaced by `tables()`."""
    if not BLOCK.search(text):
        raise ValueError("docs/scaling.md has no <!-- capacity:start --> … <!-- capacity:end --> block")
    return BLOCK.sub(lambda m: m.group(1) + tables() + "\n" + m.group(3), text)


def main() -> int:
    if sys.argv[1:] == ["--write"]:
        SCALING.write_text(render(SCALING.read_text()))
    else:
        print(tables())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
