"""jetdag.capacity: docs/scaling.md's tables are the model's output, the model's arithmetic, and the model
against the measurements it was built from."""

from __future__ import annotations

import itertools

from jetdag import capacity
from jetdag.capacity import MEASURED, Costs, plan, throughput


def test_scaling_md_tables_are_the_models() -> None:
    text = capacity.SCALING.read_text()
    assert capacity.render(text) == text, "docs/scaling.md is stale: run `python -m jetdag.capacity --write`"
    assert capacity.tables() in text


def test_plan_counts_cores_with_headroom() -> None:
    costs = Costs(scheduler=0.2, worker=0.1, nats=0.6, gateway=0.05)
    p = plan(10_000, costs, utilisation=0.5, nodes=3)
    # 10,000 jobs/s x 0.2 ms = 2 cores of scheduler work, at 50 %: 4 replicas.
    assert p.scheduler_replicas == 4 and p.shards == 8
    assert p.worker_cores == 2 and p.gateway_cores == 1
    assert p.nats_cores_per_node == 4  # 6 cores of NATS work at 50 %, over 3 nodes
    assert p.one_execution_max == 2_500  # one replica's core at 50 %
    assert plan(10_000, costs, handler_ms=10.0, utilisation=0.5).worker_cores == 202
    big = plan(1_000_000, costs, utilisation=1.0)
    assert big.scheduler_replicas == 200 and big.shards == 256  # a shard per replica, rounded to a power of 2


def test_the_model_predicts_how_the_measured_profiles_compare() -> None:
    """The runs got whatever share of the 2 shared cores was free, so absolute jobs/s cannot be predicted; but
    profiles measured back to back got about the same share, and their ratio of jobs/s should be the inverse
    ratio of their CPU per job."""
    assert len(MEASURED) >= 2
    for (a, pa), (b, pb) in itertools.combinations(MEASURED.items(), 2):
        predicted = throughput(1, pa.costs) / throughput(1, pb.costs)
        measured = pa.w3_jobs_s / pb.w3_jobs_s
        assert abs(predicted / measured - 1) < 0.35, (
            f"{a} vs {b}: the model says x{predicted:.2f}, measured x{measured:.2f}"
        )
        assert 0.3 < pa.cores_used <= 2.0, a  # the machine has 2 cores
