"""Every Prometheus metric StreamFed exports, declared in one place.

Names follow ``streamfed_<component>_<what>_<unit>``; counters end in ``_total``; labels are
``topology``, ``site``, ``model`` (the model's name), ``predictor`` (at a site: ``served``, ``local``
for the personal model, ``global``), ``component`` and, where needed, ``reason``, ``partition`` or
``device``. A label name means one thing in every component.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Every label name any StreamFed metric uses, and what it means (the same in every component).
LABELS = {
    "topology": "the topology's name",
    "site": "a site's id",
    "model": "the model's name (model.name): the key on the models topic",
    "predictor": "what a site scores with: served (the blend), local (the personal model) or global",
    "component": "aggregator, site or source",
    "reason": "why a record was dead-lettered or an update rejected",
    "partition": "a Kafka partition number",
    "device": "where the deep learner's step ran: cpu or cuda",
    "version": "StreamFed's version",
    "python": "the Python version",
    "confluent_kafka": "the confluent-kafka version",
    "librdkafka": "the librdkafka version",
}

# Site
SITE_RECORDS = Counter("streamfed_site_records_total", "Records consumed and decoded", ["topology", "site"])
SITE_LABELLED = Counter("streamfed_site_labelled_records_total", "Labelled records learned from", ["topology", "site"])
SITE_DEAD_LETTERS = Counter(
    "streamfed_site_dead_letters_total", "Records sent to the dead-letter topic", ["topology", "site", "reason"]
)
SITE_LAG = Gauge(
    "streamfed_site_consumer_lag_records", "Consumer lag from librdkafka statistics", ["topology", "site", "partition"]
)
SITE_EPSILON = Gauge(
    "streamfed_site_epsilon_spent", "Lifetime epsilon at delta over all releases", ["topology", "site"]
)
SITE_EPSILON_RECORD = Gauge(
    "streamfed_site_epsilon_per_record", "Epsilon of one record over the releases it can reach", ["topology", "site"]
)
SITE_BUDGET_REMAINING = Gauge(
    "streamfed_site_budget_remaining", "Lifetime epsilon budget left (absent without a budget)", ["topology", "site"]
)
SITE_BUDGET_EXHAUSTED = Gauge(
    "streamfed_site_budget_exhausted", "1 when the site stopped publishing for lack of budget", ["topology", "site"]
)
SITE_AUC = Gauge(
    "streamfed_site_prequential_auc", "Prequential ROC AUC over a sliding window", ["topology", "site", "predictor"]
)
SITE_SERVED_WEIGHT = Gauge(
    "streamfed_site_served_personal_weight",
    "Weight of the personal model in the served blend (1: personal only, 0: global only)",
    ["topology", "site"],
)
SITE_LOGLOSS = Gauge(
    "streamfed_site_prequential_logloss",
    "Prequential log loss over a sliding window",
    ["topology", "site", "predictor"],
)
SITE_DRIFT = Counter(
    "streamfed_site_drift_detected_total",
    "Drifts detected by ADWIN on the prequential error stream",
    ["topology", "site"],
)
SITE_UPDATES = Counter("streamfed_site_updates_published_total", "Private updates published", ["topology", "site"])
SITE_UPDATES_PENDING = Gauge(
    "streamfed_site_updates_pending",
    "Updates made but not yet delivered to the broker (kept and produced again once it is back)",
    ["topology", "site"],
)
SITE_UPDATES_DROPPED = Counter(
    "streamfed_site_updates_dropped_total",
    "Undelivered updates dropped because more than the kept maximum were waiting",
    ["topology", "site"],
)
SITE_PRODUCER_RECREATED = Counter(
    "streamfed_site_producer_recreations_total",
    "Producers rebuilt after a failed delivery or a fatal producer error",
    ["topology", "site"],
)
SITE_BASE_VERSION = Gauge(
    "streamfed_site_base_version", "Global version the site's model is based on", ["topology", "site"]
)
SITE_UPDATE_NORM = Histogram(
    "streamfed_site_update_norm",
    "Mean L2 norm of a release's per-record gradients before clipping",
    ["topology", "site"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
GPU_STEP = Histogram(
    "streamfed_gpu_step_seconds",
    "Wall time of one mini-batch step of the deep learner",
    ["topology", "site", "device"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)

SITE_CPU = Counter(
    "streamfed_site_cpu_seconds_total", "Site process CPU time reported with updates", ["topology", "site"]
)
SITE_GPU = Counter(
    "streamfed_site_gpu_seconds_total", "Wall time of GPU steps reported with updates", ["topology", "site"]
)
SITE_GPU_ENERGY = Counter(
    "streamfed_site_gpu_energy_joules_total", "GPU energy measured by NVML (absent without NVML)", ["topology", "site"]
)

# Aggregator
AGG_VERSION = Gauge(
    "streamfed_aggregator_model_version", "Latest committed global model version", ["topology", "model"]
)
AGG_VERSIONS = Counter("streamfed_aggregator_versions_total", "Model versions committed", ["topology", "model"])
AGG_ACCEPTED = Counter("streamfed_aggregator_updates_accepted_total", "Updates accepted into the buffer", ["topology"])
AGG_REJECTED = Counter(
    "streamfed_aggregator_updates_rejected_total", "Updates rejected, by reason", ["topology", "reason"]
)
AGG_STALENESS = Histogram(
    "streamfed_aggregator_staleness",
    "Versions between an update's base and the current version",
    ["topology"],
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34),
)
AGG_ENERGY = Counter(
    "streamfed_aggregator_energy_joules_total", "Estimated energy of the versions committed", ["topology", "model"]
)
AGG_CO2E = Counter(
    "streamfed_aggregator_co2e_grams_total", "Estimated CO2e of the versions committed", ["topology", "model"]
)
AGG_VERSION_ENERGY = Gauge(
    "streamfed_aggregator_version_energy_joules", "Estimated energy of the latest version", ["topology", "model"]
)
AGG_BUFFER = Gauge("streamfed_aggregator_buffer_updates", "Accepted updates waiting for the next version", ["topology"])
UPDATE_TO_VERSION = Histogram(
    "streamfed_update_to_version_seconds",
    "From an update's creation to the commit of the version including it",
    ["topology"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

# Every process
READY = Gauge(
    "streamfed_process_ready",
    "1 once the process is in its main loop (built, state restored, consumers open)",
    ["topology", "component", "site"],
)
BUILD_INFO = Gauge(
    "streamfed_build_info",
    "Always 1; the labels say what is running",
    ["version", "python", "confluent_kafka", "librdkafka"],
)

# Simulator / replay
PRODUCED = Counter("streamfed_source_records_produced_total", "Records produced to site topics", ["topology", "site"])


def serve(port: int | None) -> int | None:
    """Serve /metrics on ``port`` (0 picks a free one); returns the port, or None when disabled."""
    if port is None:
        return None
    server, _ = start_http_server(port)
    _build_info()
    bound = int(server.server_address[1])
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)
    return bound


def _build_info() -> None:
    import platform

    import confluent_kafka

    from streamfed import __version__

    BUILD_INFO.labels(
        version=__version__,
        python=platform.python_version(),
        confluent_kafka=confluent_kafka.version()[0],
        librdkafka=confluent_kafka.libversion()[0],
    ).set(1)


def ready(topology: str, component: str, site: str = "") -> None:
    """Mark this process ready (``streamfed up`` starts the data sources once every process is)."""
    READY.labels(topology=topology, component=component, site=site).set(1)


# Every reason the aggregator rejects an update for (``Rejected.reason``).
REJECT_REASONS = (
    "decode",
    "unknown_site",
    "unknown_key",
    "signature",
    "replay",
    "wrong_model",
    "shape",
    "not_finite",
    "norm",
    "future_base",
    "stale",
    "metadata",
    "secure",
)


def start_site(topology: str, site: str) -> None:
    """Create a site's counters at zero, so rate() and increase() see their first increment."""
    for counter in (SITE_RECORDS, SITE_LABELLED, SITE_UPDATES, SITE_DRIFT, SITE_UPDATES_DROPPED):
        counter.labels(topology=topology, site=site)


def start_aggregator(topology: str, model: str) -> None:
    """Create the aggregator's counters at zero, one rejection series per reason."""
    AGG_VERSIONS.labels(topology=topology, model=model)
    AGG_ACCEPTED.labels(topology=topology)
    for reason in REJECT_REASONS:
        AGG_REJECTED.labels(topology=topology, reason=reason)
