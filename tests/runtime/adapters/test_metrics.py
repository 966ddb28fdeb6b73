"""FastHistogram: the same exposition as prometheus_client's Histogram, and no observation
lost when threads observe while the registry is collected."""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from irkit.runtime.adapters.common import AdapterMetrics, FastHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def test_matches_prometheus_client_histogram() -> None:
    values = [0.001, 0.0005, 0.01, 0.05, 1.0, 3.0, 0.1,
              *np.random.default_rng(0).exponential(0.05, 200)]
    registry = CollectorRegistry()
    reference = Histogram("h", "doc", ("adapter", "model"), buckets=BUCKETS, registry=registry)
    child = reference.labels("a", "m")
    fast = FastHistogram("h", "doc", BUCKETS, {"adapter": "a", "model": "m"})
    for v in values:
        child.observe(v)
        fast.observe(v)
    want = {s.name + str(sorted(s.labels.items())): s.value
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}
    got = {s.name + str(sorted(s.labels.items())): s.value for s in fast.family().samples}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_no_observation_lost_under_concurrent_collection() -> None:
    metrics = AdapterMetrics("http", "m")
    per_thread, threads = 20000, 4
    done = threading.Event()

    def observe() -> None:
        for i in range(per_thread):
            metrics.queue_time.observe(i * 1e-6)

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    scraper.join()
    samples = {s.name: s.value for m in metrics.registry.collect() for s in m.samples
               if s.name.startswith("irkit_queue_time_seconds")}
    assert samples["irkit_queue_time_seconds_count"] == per_thread * threads
