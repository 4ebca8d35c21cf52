"""The bank test: purchases under worker kills, Redis restarts and database backend kills lose nothing.

The short run is part of `make test`; `make proof` runs the long one (10,000 purchases, >= 20 worker kills,
3 Redis restarts, 10 database backend kills). Sizes can be overridden with BANK_* environment variables."""
from __future__ import annotations

import os

import pytest

import bank


def _cfg(**defaults) -> bank.Config:
    env = {k: os.environ.get(f"BANK_{k.upper()}") for k in defaults}
    return bank.Config(**{k: type(v)(env[k]) if env[k] else v for k, v in defaults.items()})


def _run_and_assert(database, cfg):
    report = bank.run(database, cfg)
    print()
    print(report.details())
    for anomaly in report.anomalies[:50]:
        print("anomaly:", anomaly)
    print(report.line())
    assert report.purchases == cfg.purchases
    assert report.faults["worker_kill"] + report.faults["worker_restart"] >= cfg.worker_kills
    assert report.faults["redis_restart"] == cfg.redis_restarts
    assert report.faults["db_kill"] == cfg.db_kills
    assert report.anomalies == []
    # The run exercised the interesting outcomes, not only the happy path.
    assert report.statuses["completed"] > 0 and report.statuses["queued"] > 0
    return report


def test_bank_short(database):
    _run_and_assert(database, _cfg(purchases=1000, worker_kills=4, redis_restarts=1, db_kills=2, lovense_faults=2,
                                   clients=6))


@pytest.mark.slow
def test_bank_proof(database):
    _run_and_assert(database, _cfg(purchases=10_000, worker_kills=24, redis_restarts=3, db_kills=10, fans=100,
                                   models=15, clients=8, lovense_faults=6, quiet_seconds=120.0))
