"""Frozen specs for a topology. YAML keys are exactly these field names.

Each component receives only its own spec (``SiteProcessor`` gets a ``SiteSpec`` and the
``ModelSpec``/``PrivacySpec``/``UpdateSpec`` it needs, never the whole file). Cross-field checks run
at load time and name the field path and the valid choices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NumericFeature(Frozen):
    """A numeric record field, transformed by a declared (data-independent) rule.

    Scaling is declared rather than learned from the stream: running statistics would be a
    function of every record ever seen and would leak outside the accounted mechanism.
    """

    name: str
    transform: Literal["identity", "log1p", "cyclic"] = Field(
        "identity", description="cyclic gives sin and cos of 2*pi*value/period"
    )
    period: PositiveFloat | None = Field(None, description="period of a cyclic feature (24 for an hour)")
    center: float = Field(0.0, description="subtracted after the transform")
    scale: PositiveFloat = Field(1.0, description="divides after centering")
    min: float | None = Field(None, description="raw values below are dead-lettered as out_of_range")
    max: float | None = Field(None, description="raw values above are dead-lettered as out_of_range")
    missing: float | None = Field(None, description="raw value used for null; without it a null is dead-lettered")

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        if self.transform == "cyclic" and self.period is None:
            raise ValueError("transform 'cyclic' needs a period (for example 24 for an hour of day)")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self

    def output_names(self) -> list[str]:
        if self.transform == "cyclic":
            return [f"{self.name}_sin", f"{self.name}_cos"]
        return [self.name]


class CategoricalFeature(Frozen):
    """A string field, one-hot encoded over the declared values (unknown values encode as zeros)."""

    name: str
    values: list[str] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("values must be unique")
        return values

    def output_names(self) -> list[str]:
        return [f"{self.name}={v}" for v in self.values]


class FeatureSpec(Frozen):
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []
    boolean: list[str] = []

    def input_fields(self) -> list[str]:
        return [f.name for f in self.numeric] + [f.name for f in self.categorical] + list(self.boolean)

    def names(self) -> list[str]:
        """The fixed feature order every site and the aggregator share."""
        out: list[str] = []
        for num in self.numeric:
            out += num.output_names()
        for cat in self.categorical:
            out += cat.output_names()
        out += list(self.boolean)
        return out

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        fields = self.input_fields()
        if not fields:
            raise ValueError("declare at least one feature (numeric, categorical or boolean)")
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if dup:
            raise ValueError(f"fields declared twice: {', '.join(dup)}")
        return self


class OnlineSpec(Frozen):
    """The personal model's online learner: logistic regression on every labelled event.

    ``micro_batch: 1`` steps on each record through river's ``learn_one``
    (``river.linear_model.LogisticRegression``, SGD). ``micro_batch: m`` scores ``m`` rows at a time
    with the weights as they are and then takes one implicit step on them in numpy, several times
    faster (streamfed/learners/online.py). Fast streams gain; short ones learn less per record, so
    each shipped topology sets it from ``benchmarks/quality.py --online-micro-batch`` (benchmarks/README.md).
    """

    learner: Literal["logistic"] = Field("logistic", description="logistic regression")
    learning_rate: PositiveFloat = Field(0.05, description="step size for weights and intercept")
    l2: float = Field(0.0, ge=0, description="L2 penalty (on the features a row has, as river applies it)")
    micro_batch: int = Field(
        1, ge=1, le=4096, description="rows per step, cut by position in the stream; 1: river learn_one per record"
    )


class DeepSpec(Frozen):
    """The torch network trained in periodic mini-batch steps from a bounded replay buffer."""

    enabled: bool = True
    hidden: list[Annotated[int, Field(gt=0, le=65536)]] = Field([16], description="hidden layer widths (ReLU)")
    batch_size: int = Field(1024, gt=0, le=1 << 20, description="rows per mini-batch step")
    replay_size: int = Field(20000, gt=0, description="capacity of the replay buffer, in rows")
    step_every_records: int = Field(2000, gt=0, description="take steps after this many new labelled rows")
    step_every_seconds: PositiveFloat = Field(5.0, description="... or after this many seconds")
    steps: int = Field(4, gt=0, le=10000, description="optimizer (Adam) steps per trigger")
    learning_rate: PositiveFloat = 1e-3
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")


class BlendSpec(Frozen):
    """How a site learns, online, what it serves from two models (see streamfed/site/served.py).

    The personal model joins its online and deep learners this way, and the served prediction joins
    the personal and the global model. Experts: each model alone and, for each weight ``a`` on the
    grid, ``sigmoid(s (a z_1 + (1 - a) z_2) + c)`` with ``s, c`` learnt online; served: their
    exponentially weighted mixture by discounted prequential log loss, from a prior that favours the
    first model (the personal one, so a site starts where local-only would).
    """

    grid: int = Field(11, ge=2, le=101, description="mixing weights 0, 1/(grid-1), ..., 1")
    half_life: int = Field(
        5000, gt=0, description="labelled records after which a past loss counts half (follows drift)"
    )
    calibration_prior: PositiveFloat = Field(
        1.0, description="weight, in records, of the prior (scale 1, bias 0) of each blend's online Platt scaling"
    )
    prior_first: float = Field(
        0.3, gt=0, lt=1, description="prior weight of the first model alone (the personal one): regret to it ln(1/w)"
    )


class ModelSpec(Frozen):
    name: Name = Field(description="model name: the key on the models topic")
    task: Literal["binary_classification"] = "binary_classification"
    record_schema: str = Field(
        description="a shipped Avro schema's name (schemas/avro/<name>.avsc) or the path of your own .avsc "
        "file, relative to the topology file"
    )
    label: str = Field(description="record field holding the label (nullable boolean: null = not yet known)")
    features: FeatureSpec
    online: OnlineSpec = OnlineSpec()
    deep: DeepSpec = DeepSpec()
    blend: BlendSpec = BlendSpec()
    seed: int = Field(0, description="seed of version 0's parameters, shared by every site and the aggregator")
    auc_window: int = Field(1000, gt=10, description="records in the sliding window of prequential metrics")
    id_field: str | None = Field(
        None,
        description="record field that identifies a record: a repeat among the last dedup_window ids is "
        "dead-lettered as duplicate (null: no de-duplication)",
    )
    dedup_window: int = Field(100_000, gt=0, description="ids remembered for de-duplication (memory only)")
    site_field: str | None = Field(
        "site_id",
        description="record field naming the site that produced it: a record naming another site "
        "(or an empty name) is dead-lettered as wrong_site (null: not checked)",
    )


class PrivacySpec(Frozen):
    """Per-record differential privacy of every published update (see docs/privacy.md).

    Each release is built from Gaussian-noised sums of per-record clipped gradients. ``window_sum``:
    one sum per window, every record's gradient at the site's current global point. ``dp_sgd``:
    ``steps`` noised DP-SGD steps per release, each over a Poisson sample (``sampling_rate``) of the
    records of the last ``max_updates_per_record`` windows.
    """

    epsilon: PositiveFloat = Field(description="per-record target epsilon over every release a record can reach")
    delta: float = Field(1e-6, gt=0, lt=1)
    clip_norm: PositiveFloat = Field(1.0, description="L2 bound of each record's gradient (the sensitivity)")
    mechanism: Literal["window_sum", "dp_sgd"] = Field(
        "window_sum", description="window_sum: one noised sum per window; dp_sgd: subsampled steps per window"
    )
    steps: int = Field(1, ge=1, le=10000, description="dp_sgd: noised steps per release")
    sampling_rate: float = Field(
        1.0, gt=0, le=1, description="dp_sgd: Poisson probability that a pooled record is in a step"
    )
    max_updates_per_record: int = Field(
        1, ge=1, le=1000, description="k: releases one record can reach (dp_sgd: windows a record stays pooled)"
    )
    noise_multiplier: PositiveFloat | None = Field(
        None, description="noise std / clip_norm of each sum; calibrated from epsilon when left out"
    )
    budget_epsilon: PositiveFloat | None = Field(None, description="lifetime epsilon budget per site")

    @model_validator(mode="after")
    def _check(self) -> PrivacySpec:
        if self.mechanism == "window_sum":
            fixed = {"steps": self.steps, "sampling_rate": self.sampling_rate, "max_updates_per_record": 0}
            fixed["max_updates_per_record"] = self.max_updates_per_record
            wrong = [f"{k} = {v}" for k, v in fixed.items() if v != 1]
            if wrong:
                raise ValueError(
                    f"mechanism 'window_sum' makes one noised sum per window, so steps, sampling_rate and "
                    f"max_updates_per_record must be 1 (got {', '.join(wrong)}); valid mechanisms: window_sum, dp_sgd"
                )
        return self


class UpdateSpec(Frozen):
    """When a site publishes: every N labelled records or T seconds, whichever first."""

    every_records: int = Field(2000, gt=0, description="publish after this many labelled records")
    every_seconds: PositiveFloat = Field(5.0, description="... or after this many seconds")
    min_records: int = Field(50, ge=1, description="never publish a window smaller than this")
    learning_rate: PositiveFloat = Field(
        1.0, description="step the site takes on each noised mean gradient (the release is that step)"
    )


class SecureAggregationSpec(Frozen):
    """Secure aggregation (opt-in): the aggregator sees only the sum of a buffer's masked updates.

    A buffer is the cohort's updates against one base version; it closes when every site has sent
    one, or ``dropout_timeout_seconds`` after its first update with at least ``threshold`` present.
    Each site adds noise of std ``sigma C / sqrt(threshold)``, so any sum the aggregator can unmask
    carries at least the calibrated ``sigma C`` (see docs/privacy.md).
    """

    threshold: int = Field(2, ge=2, description="t: fewest updates a buffer may unmask; also the Shamir threshold")
    dropout_timeout_seconds: PositiveFloat = Field(
        10.0, description="close a buffer this long after its first update if at least t sites are in it"
    )
    bound: PositiveFloat | None = Field(
        None, description="per-coordinate clip before integer quantisation; default C (1 + 6 sigma / sqrt(t))"
    )


class AggregationSpec(Frozen):
    strategy: Literal["fedbuff"] = Field("fedbuff", description="buffered asynchronous aggregation")
    rule: Literal["mean", "median", "trimmed_mean", "norm_bound"] = Field(
        "mean", description="how a buffer's deltas combine; the last three resist poisoning"
    )
    buffer_size: int = Field(3, ge=1, le=10000, description="K: accepted updates per version")
    server_learning_rate: PositiveFloat = 1.0
    server_optimizer: Literal["sgd", "momentum", "adam"] = Field(
        "sgd", description="how the server applies a buffer's combined update (FedOpt: delta as a pseudo-gradient)"
    )
    server_momentum: float = Field(0.9, ge=0, lt=1, description="momentum, or Adam's beta1")
    server_beta2: float = Field(0.99, gt=0, lt=1, description="Adam's beta2")
    server_epsilon: PositiveFloat = Field(1e-3, description="Adam's epsilon (adaptivity floor)")
    max_staleness: int = Field(
        20,
        ge=0,
        description="reject an update that was already more than this many versions behind when it was published "
        "(versions made later, e.g. from a backlog after an aggregator outage, do not count)",
    )
    staleness_exponent: float = Field(0.5, ge=0, le=4, description="weight (1 + staleness) ** -a")
    weight_by_examples: bool = Field(True, description="weight by the update's example count")
    trim_fraction: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: fraction cut at each end")
    norm_bound: PositiveFloat | None = Field(None, description="norm_bound rule: scale updates down to this")
    max_update_norm: PositiveFloat | None = Field(
        None, description="reject updates above this L2 norm; derived from clip and noise when left out"
    )
    commit_interval_seconds: PositiveFloat = Field(
        2.0, description="commit rejections and offsets this often when no version is pending"
    )
    secure: SecureAggregationSpec | None = Field(
        None, description="pairwise-masked secure aggregation of each buffer (rule must be mean)"
    )

    @model_validator(mode="after")
    def _check(self) -> AggregationSpec:
        if self.rule == "norm_bound" and self.norm_bound is None:
            raise ValueError("rule 'norm_bound' needs norm_bound")
        if self.secure is not None and self.rule != "mean":
            raise ValueError(
                f"aggregation.secure needs rule 'mean' (got '{self.rule}'): a robust rule must see each update, "
                "which secure aggregation prevents"
            )
        return self


Scalar = str | int | float | bool


class SchemaRegistrySpec(Frozen):
    """A Confluent-API Schema Registry: schemas are registered and looked up there (ids it assigns)."""

    url: str = Field(
        pattern=r"^(https?|mock)://.+",
        description="http(s)://host:port of the registry; mock://name: confluent-kafka's in-process registry (tests)",
    )
    config: dict[str, Scalar] = Field(
        default_factory=dict,
        description="more SchemaRegistryClient settings (basic.auth.user.info, ssl.ca.location, max.retries, ...)",
    )


class KafkaSpec(Frozen):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="overridden by --bootstrap")
    settings: dict[str, Scalar] = Field(
        default_factory=dict, description="librdkafka settings applied to every client (TLS, SASL, timeouts)"
    )
    consumer_settings: dict[str, Scalar] = Field(default_factory=dict, description="librdkafka, consumers only")
    producer_settings: dict[str, Scalar] = Field(default_factory=dict, description="librdkafka, producers only")
    partitions: int = Field(3, ge=1, description="partitions of each site's transaction topic")
    replication_factor: int = Field(1, ge=1, description="of every topic StreamFed creates")
    max_message_bytes: int = Field(16 << 20, ge=1 << 20, le=1 << 30)
    schema_registry: SchemaRegistrySpec | None = Field(
        None,
        description="register and look up record schemas in this registry (subject: the record's full name); "
        "without it, schema ids are local fingerprints",
    )


class SimulatorSpec(Frozen):
    """Synthetic card transactions for one site (used by `streamfed simulate`)."""

    rate: PositiveFloat = Field(500.0, description="transactions per second")
    fraud_rate: float = Field(0.02, gt=0, lt=0.5, description="approximate base fraud rate of the site")
    drift_period_seconds: PositiveFloat = Field(300.0, description="time for fraud to move to the next category")
    online_share: float = Field(0.35, ge=0, le=1, description="share of card-not-present (online) merchants")
    night_share: float = Field(0.12, ge=0, le=1, description="share of transactions between 0 and 6 h")
    label_fraction: float = Field(1.0, ge=0, le=1, description="share of records that carry a label")
    seed: int | None = Field(None, description="seed of the generator (None: random)")


class SourceSpec(Frozen):
    """A real data file replayed as records (used by `streamfed replay`)."""

    path: Path = Field(description="relative to the topology file; .gz is read as gzip")
    format: Literal["csv"] = "csv"
    separator: str = ","
    header: bool = Field(True, description="first row names the columns")
    columns: list[str] | None = Field(None, description="column names (required without a header)")
    na_values: list[str] = Field(["", "NA", "?"], description="cells that mean missing (null)")
    fields: dict[str, str] = Field(default_factory=dict, description="record field -> column (default: same)")
    label_column: str
    label_positive: list[str] | None = Field(None, description="label is true when the cell is one of these")
    label_threshold: float | None = Field(None, description="label is true when the cell is above this")
    where: dict[str, list[str]] = Field(default_factory=dict, description="keep rows whose column is one of")
    drop_columns: list[str] = Field([], description="columns never used (e.g. ones that leak the label)")
    shuffle_seed: int | None = Field(
        None, description="replay rows in a seeded random order (for files with no time order)"
    )
    label_lead: int = Field(
        0,
        ge=0,
        description="take the label from the file row this many rows later (forecasting the next hour "
        "in an hourly file); the last rows have a null label",
    )
    rate: PositiveFloat = Field(200.0, description="records per second")

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        if (self.label_positive is None) == (self.label_threshold is None):
            raise ValueError("give exactly one of label_positive (values) or label_threshold (number)")
        if self.label_lead and self.shuffle_seed is not None:
            raise ValueError("label_lead needs the file's order; leave out shuffle_seed")
        if not self.header and not self.columns:
            raise ValueError("a file without a header needs columns")
        return self


class SiteSpec(Frozen):
    id: Name
    topic: str | None = Field(None, description="default streamfed.<topology>.transactions.<id>")
    public_key: Path | None = Field(None, description="PEM; default <state_dir>/<name>/keys/<id>.pub")
    private_key: Path | None = Field(None, description="PEM; default <state_dir>/<name>/keys/<id>.key")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="/metrics port of `streamfed site`")
    simulator: SimulatorSpec | None = None
    source: SourceSpec | None = None


class EnergySpec(Frozen):
    """Factors that turn measured seconds into energy and emissions, per model version."""

    cpu_watts: float = Field(15.0, ge=0, description="power of one fully busy CPU core")
    gpu_watts: float = Field(300.0, ge=0, description="GPU power when NVML cannot measure energy")
    grid_g_co2e_per_kwh: float = Field(400.0, ge=0, description="grid carbon intensity, grams CO2e per kWh")


class MetricsSpec(Frozen):
    aggregator_port: int | None = Field(None, ge=0, le=65535, description="/metrics port of `streamfed aggregator`")


class Topology(Frozen):
    name: Name = Field(description="names the topics: streamfed.<name>.<stream>")
    description: str = ""
    model: ModelSpec
    privacy: PrivacySpec
    update: UpdateSpec = UpdateSpec()
    aggregation: AggregationSpec = AggregationSpec()
    kafka: KafkaSpec = KafkaSpec()
    metrics: MetricsSpec = MetricsSpec()
    energy: EnergySpec = EnergySpec()
    sites: list[SiteSpec] = Field(min_length=1)
    state_dir: Path = Field(
        Path(".streamfed"), description="checkpoints, ledgers and keys live under <state_dir>/<name>"
    )

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[SiteSpec]) -> list[SiteSpec]:
        ids = [s.id for s in sites]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"site ids must be unique; repeated: {', '.join(dup)}")
        return sites

    @model_validator(mode="after")
    def _check(self) -> Topology:
        if self.aggregation.max_update_norm is not None and self.aggregation.max_update_norm < self.privacy.clip_norm:
            raise ValueError("aggregation.max_update_norm must be at least privacy.clip_norm")
        if not math.isfinite(self.privacy.epsilon):
            raise ValueError("privacy.epsilon must be finite")
        secure = self.aggregation.secure
        if secure is not None and self.privacy.mechanism != "window_sum":
            raise ValueError(
                f"aggregation.secure needs privacy.mechanism 'window_sum' (got '{self.privacy.mechanism}'): "
                "distributed noise adds up only over sums released once; dp_sgd's local steps are not a sum"
            )
        if secure is not None and secure.threshold > len(self.sites):
            raise ValueError(
                f"aggregation.secure.threshold ({secure.threshold}) cannot exceed "
                f"the number of sites ({len(self.sites)})"
            )
        return self

    # Topic names: streamfed.<topology>.<stream>
    def topic(self, stream: str) -> str:
        return f"streamfed.{self.name}.{stream}"

    @property
    def updates_topic(self) -> str:
        return self.topic("updates")

    @property
    def models_topic(self) -> str:
        return self.topic("models")

    @property
    def lineage_topic(self) -> str:
        return self.topic("lineage")

    @property
    def rejected_topic(self) -> str:
        return self.topic("updates.rejected")

    @property
    def secagg_topic(self) -> str:
        return self.topic("secagg")

    @property
    def dead_letter_topic(self) -> str:
        return self.topic("deadletters")

    def site(self, site_id: str) -> SiteSpec:
        for s in self.sites:
            if s.id == site_id:
                return s
        raise KeyError(site_id)

    def transactions_topic(self, site: SiteSpec) -> str:
        return site.topic or self.topic(f"transactions.{site.id}")

    @property
    def home(self) -> Path:
        """Where this topology's checkpoints, ledgers and keys live."""
        return self.state_dir / self.name

    def public_key_path(self, site: SiteSpec) -> Path:
        return site.public_key or self.home / "keys" / f"{site.id}.pub"

    def private_key_path(self, site: SiteSpec) -> Path:
        return site.private_key or self.home / "keys" / f"{site.id}.key"

    def secagg_public_key_path(self, site: SiteSpec) -> Path:
        """The site's X25519 key for secure aggregation, next to its Ed25519 key."""
        pub = self.public_key_path(site)
        return pub.with_name(f"{pub.stem}.x25519.pub")

    def secagg_private_key_path(self, site: SiteSpec) -> Path:
        priv = self.private_key_path(site)
        return priv.with_name(f"{priv.stem}.x25519.key")
