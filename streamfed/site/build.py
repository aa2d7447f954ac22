"""Wire a SiteProcessor from a topology: its own specs, keys, ledger and state."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from streamfed.privacy.accountant import PrivacyLedger, resolve
from streamfed.privacy.secagg import load_x25519_private, load_x25519_public, secagg_params
from streamfed.privacy.signing import FileSigner
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.site.learner import SiteLearner, SiteState
from streamfed.site.processor import SiteProcessor, SiteTopics
from streamfed.site.secure import SecureSite
from streamfed.topology.spec import Topology


def build_learner(
    topo: Topology, site_id: str, rng: np.random.Generator | None = None, persist: bool = True, **kw: object
) -> SiteLearner:
    """The site's learner with its key, ledger and sequence state (kept under the state dir if ``persist``)."""
    site = topo.site(site_id)
    home = topo.home / "sites" / site.id
    ledger = PrivacyLedger(topo.privacy.delta, topo.privacy.budget_epsilon, home / "ledger.jsonl" if persist else None)
    return SiteLearner(
        topology=topo.name,
        site_id=site.id,
        model_spec=topo.model,
        privacy=topo.privacy,
        update=topo.update,
        signer=FileSigner(topo.private_key_path(site)),
        ledger=ledger,
        state=SiteState(
            home / "state.json" if persist else None, max((r.sequence for r in ledger.releases), default=0)
        ),
        mechanism=resolve(topo.privacy)[0],
        rng=rng,
        noise_divisor=secagg_params(topo).noise_divisor if topo.aggregation.secure is not None else 1.0,
        **kw,  # type: ignore[arg-type]
    )


def build_secure_site(topo: Topology, learner: SiteLearner) -> SecureSite:
    """The site's secure-aggregation client: its X25519 key and every peer's public key."""
    params = secagg_params(topo)
    site = topo.site(learner.site_id)
    key = load_x25519_private(topo.secagg_private_key_path(site))
    peers = {s.id: load_x25519_public(topo.secagg_public_key_path(s)) for s in topo.sites if s.id != site.id}
    state = learner.state.path.parent / "secagg-revealed.json" if learner.state.path is not None else None
    return SecureSite(site.id, params, key, peers, learner.signer, learner.rng, state)


def build_site(
    topo: Topology,
    site_id: str,
    rng: np.random.Generator | None = None,
    tamper: Callable[[np.ndarray], np.ndarray] | None = None,
    background_deep: bool = False,
) -> SiteProcessor:
    """The site's processor; ``background_deep`` builds the personal deep model on a thread (see
    :class:`~streamfed.site.personal.PersonalModel`): ``streamfed site`` does, to start at once."""
    site = topo.site(site_id)
    topics = SiteTopics(
        transactions=topo.transactions_topic(site),
        updates=topo.updates_topic,
        models=topo.models_topic,
        dead_letters=topo.dead_letter_topic,
        secagg=topo.secagg_topic if topo.aggregation.secure is not None else None,
    )
    learner = build_learner(topo, site_id, rng, background_deep=background_deep)
    secure = build_secure_site(topo, learner) if topo.aggregation.secure is not None else None
    return SiteProcessor(
        learner,
        topo.kafka,
        topics,
        AvroCodec(topo.model.record_schema, registry_for(topo.kafka)),
        tamper=tamper,
        secure=secure,
    )
