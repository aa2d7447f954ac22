"""A Faust app that embeds a StreamFed site (by default the fraud topology's bank-north).

The app learns from the site's transaction topic, dead-letters the records it cannot use and
publishes the site's private, signed updates; an aggregator (``streamfed aggregator -t fraud``)
turns them into model versions, on which the app rebases. Create the topics and the site's keys
first (``streamfed provision -t fraud`` and ``streamfed keys generate -t fraud``, or ``streamfed up``).

Run it from the repository root (``pip install -e '.[faust]'``)::

    python examples/faust_app.py worker -l info

Environment (all optional): ``STREAMFED_TOPOLOGY`` (a name or a YAML path, default ``fraud``),
``STREAMFED_SITE`` (default ``bank-north``), ``STREAMFED_FAUST_APP_ID`` (the Faust app id, which is
also its consumer group; default ``streamfed-<topology>-<site>``), ``STREAMFED_METRICS_PORT``
(serve the site's Prometheus metrics on this port).
"""

from __future__ import annotations

import logging
import os

import faust
from prometheus_client import start_http_server

from streamfed.integrations.faust import site_agent
from streamfed.topology import load_topology

log = logging.getLogger(__name__)

topology = load_topology(os.environ.get("STREAMFED_TOPOLOGY", "fraud"))
site_id = os.environ.get("STREAMFED_SITE", "bank-north")
max_bytes = topology.kafka.max_message_bytes

app = faust.App(
    os.environ.get("STREAMFED_FAUST_APP_ID", f"streamfed-{topology.name}-{site_id}"),
    broker=[f"kafka://{server.strip()}" for server in topology.kafka.bootstrap_servers.split(",")],
    store="memory://",
    web_enabled=False,
    # This app has no on_leader timers, so it needs no leader-election topic.
    topic_disable_leader=True,
    # Model updates and versions can be as large as the topology allows.
    producer_max_request_size=max_bytes,
    consumer_max_fetch_size=max_bytes,
    # Group joins on the embedded broker take about half the session timeout; these match the shipped
    # topologies' consumer settings. A production Kafka can keep Faust's defaults.
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.3,
)

site = site_agent(app, topology, site_id)


@app.task
async def serve_metrics() -> None:
    port = os.environ.get("STREAMFED_METRICS_PORT")
    if port:
        start_http_server(int(port))
        log.info("site=%s metrics on port %s", site.site_id, port)


# The app's own agents live beside the site, for example on the same transactions (Faust commits an
# offset once every agent reading the topic has acked it):
#
# @app.agent(site.transactions)
# async def alerts(stream):
#     async for value in stream:
#         ...

if __name__ == "__main__":
    app.main()
