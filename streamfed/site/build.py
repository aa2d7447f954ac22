"""Wire a SiteProcessor from a topology: its own specs, keys, ledger and state."""

from __future__ import annotations

import numpy as np

from streamfed.privacy.accountant import PrivacyLedger, resolve_noise_multiplier
from streamfed.privacy.signing import SiteSigner, load_private_key
from streamfed.serde.avro import AvroCodec
from streamfed.site.processor import SiteProcessor, SiteState, SiteTopics
from streamfed.topology.spec import Topology


def build_site(topo: Topology, site_id: str, rng: np.random.Generator | None = None) -> SiteProcessor:
    site = topo.site(site_id)
    home = topo.home / "sites" / site.id
    topics = SiteTopics(
        transactions=topo.transactions_topic(site),
        updates=topo.updates_topic,
        models=topo.models_topic,
        dead_letters=topo.dead_letter_topic,
    )
    return SiteProcessor(
        topology=topo.name,
        site_id=site.id,
        model_spec=topo.model,
        privacy=topo.privacy,
        update=topo.update,
        kafka=topo.kafka,
        topics=topics,
        signer=SiteSigner(load_private_key(topo.private_key_path(site))),
        ledger=PrivacyLedger(topo.privacy.delta, topo.privacy.budget_epsilon, home / "ledger.jsonl"),
        state=SiteState(home / "state.json"),
        sigma=resolve_noise_multiplier(topo.privacy),
        codec=AvroCodec(topo.model.record_schema),
        rng=rng,
    )
