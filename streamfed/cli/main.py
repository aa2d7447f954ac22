"""The ``streamfed`` command."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from streamfed.cli import services
from streamfed.cli.common import LOG_FORMATS
from streamfed.cli.config import keys_app, topology_app
from streamfed.cli.models import models_app
from streamfed.cli.privacy import privacy_app
from streamfed.cli.up import up

app = typer.Typer(
    name="streamfed",
    help="Streaming-first federated learning on Kafka: sites learn online on live streams, publish "
    "differentially private updates, an aggregator produces model versions continuously.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object per log line (inherited by what `up` starts)")
    ] = os.environ.get("STREAMFED_LOG_FORMAT", "text"),
) -> None:
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"{log_format!r}; valid: {', '.join(LOG_FORMATS)}", param_hint="--log-format")
    os.environ["STREAMFED_LOG_FORMAT"] = log_format


app.command("up")(up)
app.command("broker")(services.broker)
app.command("provision")(services.provision)
app.command("site")(services.site)
app.command("aggregator")(services.aggregator)
app.command("simulate")(services.simulate)
app.command("replay")(services.replay)
app.command("lag")(services.lag)
app.add_typer(topology_app, name="topology")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(privacy_app, name="privacy")
