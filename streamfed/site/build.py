"""Wire a SiteProcessor from a topology: its own specs, keys, ledger and state."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamfed.errors import ConfigError
from streamfed.privacy.accountant import PrivacyLedger, resolve
from streamfed.privacy.secagg import load_x25519_private, load_x25519_public, secagg_params
from streamfed.privacy.signing import FileSigner, sequence_space
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.site.learner import SiteLearner, SiteState
from streamfed.site.processor import SiteProcessor, SiteTopics
from streamfed.site.secure import SecureSite
from streamfed.topology.spec import Topology

WORKER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def site_home(topo: Topology, site_id: str, worker: str = "") -> Path:
    """Where a site keeps its ledger and state: ``<home>/sites/<id>``, or ``<home>/sites/<id>/workers/<worker>``
    for one worker of a site run as several processes."""
    if worker and not WORKER_NAME.fullmatch(worker):
        raise ConfigError(f"worker name {worker!r}: use 1-64 letters, digits, '.', '-' or '_'")
    home = topo.home / "sites" / site_id
    return home / "workers" / worker if worker else home


def site_ledgers(topo: Topology) -> list[tuple[str, Path]]:
    """``(sequence space, ledger path)`` of every site of the topology, and of each of its workers."""
    out = []
    for site in topo.sites:
        home = site_home(topo, site.id)
        out.append((site.id, home / "ledger.jsonl"))
        workers = home / "workers"
        if workers.is_dir():
            out += [(sequence_space(site.id, w.name), w / "ledger.jsonl") for w in sorted(workers.iterdir())]
    return out


def build_learner(
    topo: Topology,
    site_id: str,
    rng: np.random.Generator | None = None,
    persist: bool = True,
    worker: str = "",
    **kw: object,
) -> SiteLearner:
    """The site's learner with its key, ledger and sequence state (kept under the state dir if ``persist``).

    ``worker`` names one of several processes of the site sharing its topic's partitions: it keeps a
    ledger and a sequence space of its own (:func:`site_home`).
    """
    site = topo.site(site_id)
    home = site_home(topo, site.id, worker)
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
        worker=worker,
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
    worker: str = "",
) -> SiteProcessor:
    """The site's processor; ``background_deep`` builds the personal deep model on a thread (see
    :class:`~streamfed.site.personal.PersonalModel`): ``streamfed site`` does, to start at once.

    ``worker`` (``streamfed site --worker``): this process is one of several of the site, in the
    site's consumer group, so each reads its share of the topic's partitions; it publishes in a
    sequence space and under a privacy ledger of its own. Secure aggregation takes one update per
    site and version, so it allows no workers.
    """
    site = topo.site(site_id)
    if worker and topo.aggregation.secure is not None:
        raise ConfigError(
            f"site {site_id}: --worker {worker!r} with aggregation.secure; secure aggregation takes one"
            " process per site (run the site without --worker)"
        )

    topics = SiteTopics(
        transactions=topo.transactions_topic(site),
        updates=topo.updates_topic,
        models=topo.models_topic,
        dead_letters=topo.dead_letter_topic,
        secagg=topo.secagg_topic if topo.aggregation.secure is not None else None,
    )
    learner = build_learner(topo, site_id, rng, worker=worker, background_deep=background_deep)
    secure = build_secure_site(topo, learner) if topo.aggregation.secure is not None else None
    return SiteProcessor(
        learner,
        topo.kafka,
        topics,
        AvroCodec(topo.model.record_schema, registry_for(topo.kafka)),
        tamper=tamper,
        secure=secure,
    )
