"""The simulator's typed configuration: every section of `Config`, its defaults and cross-checks.

Defaults are the paper's setup (d=15, V=30, 50 candidates, 22 cycles, top-k 10) with the paper
model's calibrated parameters (docs/model.md says where each value comes from). The machinery
(strict sections, TOML, dotted overrides, one-line errors) is `config_base.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from archrefine.core.config_base import (  # noqa: F401 - re-exported: these lived here
    ConfigError,
    OverridableModel,
    StrictModel,
    load_as,
    parse_overrides,
    parse_value,
    set_dotted,
    validate_as,
)

SEED_MAX = 2**63 - 1
"""Largest seed: TOML integers are signed 64-bit, so a larger one could not be written to (and
read back from) a run's config.toml; numpy's SeedSequence takes any non-negative integer."""


NASBENCH_DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers",
                     "arxiv", "proteins")  # fmt: skip
"""NAS-Bench-Graph's datasets (the wheel ships `light/<name>.bench` for each)."""


class SpaceConfig(StrictModel):
    """What a token sequence means. `abstract` is the paper's space; the others fix their own
    length and vocabulary (15 × 30 for grounded, the benchmark's cell encoding for
    nasbench-graph), so `length` and `vocab` apply to the abstract space only."""

    kind: Literal["abstract", "grounded", "nasbench-graph"] = Field(
        "abstract", description="what a sequence means: grounded = a real PyTorch network"
    )
    length: int = Field(15, ge=2, le=256, description="abstract: tokens per architecture (d)")
    vocab: int = Field(30, ge=2, le=127, description="abstract: component types (V)")
    known: int = Field(50, ge=0, le=100_000, description="abstract: known architectures archived")
    distance: Literal["hamming", "canonical"] = Field(
        "hamming", description="grounded: canonical = edit distance with no-ops removed"
    )
    dataset: Literal[NASBENCH_DATASETS] = Field(  # type: ignore[valid-type]
        "cora", description="nasbench-graph: which dataset's measurements"
    )

    @model_validator(mode="after")
    def _fixed_shape(self) -> SpaceConfig:
        if self.kind != "abstract" and (self.length, self.vocab) != (15, 30):
            raise ValueError(
                f"length and vocab apply to the abstract space; the {self.kind} space fixes "
                f"its own (got length {self.length}, vocab {self.vocab})"
            )
        if self.kind != "grounded" and self.distance != "hamming":
            raise ValueError("distance 'canonical' needs space.kind = 'grounded'")
        return self


class LearnedConfig(StrictModel):
    """`generator.kind = "learned"`: model size, sampling, pre-training and fine-tuning."""

    d_model: int = Field(64, ge=8, le=1024, description="transformer width")
    layers: int = Field(2, ge=1, le=12, description="transformer blocks")
    heads: int = Field(4, ge=1, le=64, description="attention heads (must divide d_model)")
    lr: float = Field(3e-3, ge=0, le=10, description="fine-tuning learning rate (Adam)")
    steps: int = Field(20, ge=0, le=100_000, description="fine-tuning steps per cycle")
    batch: int = Field(32, ge=1, le=100_000, description="fine-tuning minibatch per trial")
    # below 0.01 logits / T overflows to inf and sampling draws garbage, silently
    temperature: float = Field(1.0, ge=0.01, le=10, description="sampling temperature")
    temperature_span: float = Field(
        0.0,
        ge=0,
        le=10,
        description="temperature added per unit of mutation rate: T = temperature + span · rate",
    )
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    pretrain_steps: int = Field(600, ge=0, le=1_000_000, description="most pre-training steps")
    pretrain_noise: float = Field(
        0.1, ge=0, le=1, description="token-replacement rate of the noisy KNOWN copies"
    )
    pretrain_lr: float = Field(3e-3, ge=0, le=10, description="pre-training learning rate (Adam)")
    target_validity: float = Field(
        0.4, ge=0, le=1, description="pre-training stops once sampled validity reaches this"
    )
    lora_rank: int = Field(0, ge=0, le=256, description="0: full fine-tuning; >0: LoRA rank")

    @model_validator(mode="after")
    def _heads_divide(self) -> LearnedConfig:
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        return self


class GeneratorConfig(StrictModel):
    """The paper model's generator: a per-position prior plus a learned validity bonus."""

    kind: Literal["paper", "learned"] = Field(
        "paper", description="who proposes: the paper model, or a small transformer (grounded)"
    )
    # bounded: ±1e308 passed and overflowed into NaN metrics; log-odds beyond ±100
    # are certainty to double precision, a bonus_rate above 10 completes in one tenth of a step
    base_logit: float = Field(
        1.34, ge=-100, le=100, description="per-token correctness log-odds before learning"
    )
    bonus_max: float = Field(
        8.0, ge=0, le=100, description="largest learned validity bonus (log-odds)"
    )
    bonus_rate: float = Field(
        0.034, ge=0, le=10, description="bonus gained per full selection (1: full at once)"
    )
    familiarity: float = Field(
        0.43, ge=0, le=10, description="log-odds per nat of token familiarity"
    )
    ceiling: float = Field(0.97, gt=0, le=1, description="validity ceiling (non-structural faults)")
    prior_rate: float = Field(0.56, ge=0, le=1, description="prior step toward the selection")
    smoothing: float = Field(0.26, ge=0, le=1, description="label smoothing of fine-tune targets")
    temperature: float = Field(
        0.75, ge=0.01, le=10, description="decoding temperature of the prior at mutation rate 0"
    )
    temperature_span: float = Field(
        0.25, ge=0, le=10, description="decoding temperature added per unit of mutation rate"
    )
    drift: float = Field(
        0.0,
        ge=0,
        le=10,
        description="per-token log-odds lost per full fine-tuning round on its own outputs "
        "(self-consumption drift, docs/rise-and-fall.md; 0 = off)",
    )
    bonus_growth: Literal["round", "set"] = Field(
        "round",
        description="bonus per round: bonus_rate per full selection (round), or times the "
        "accumulated fine-tuning set's size in selections (set; docs/rise-and-fall.md)",
    )
    learned: LearnedConfig = LearnedConfig()


class LoopConfig(StrictModel):
    cycles: int = Field(22, ge=1, le=10_000, description="refinement cycles")
    population: int = Field(50, ge=2, le=1_000_000, description="candidates per cycle")
    top_k: int = Field(10, ge=1, description="selected per cycle: templates and fine-tune set")
    fresh_fraction: float = Field(0.35, ge=0, le=1, description="share sampled fresh each cycle")
    novelty_k: int = Field(15, ge=1, description="neighbours averaged for novelty")
    archive: Literal["selected", "valid", "all"] = Field(
        "selected", description="which candidates of earlier cycles join the novelty archive"
    )

    @model_validator(mode="after")
    def _k_fits(self) -> LoopConfig:
        if self.top_k > self.population:
            raise ValueError(f"top_k ({self.top_k}) must not exceed population ({self.population})")
        return self


class InterventionConfig(StrictModel):
    """Ways to keep a loop diverse beyond the mutation schedule (docs/interventions.md); every
    default is off, and a config with all of them off runs exactly as without this section."""

    selection: Literal["top-k", "novelty"] = Field(
        "top-k", description="novelty: select by fitness + novelty_weight · novelty"
    )
    novelty_weight: float = Field(0.0, ge=0, le=1e6, description="λ of novelty selection")
    qd: Literal["off", "map-elites"] = Field(
        "off", description="map-elites: select uniformly among a pyribs grid archive's elites"
    )
    qd_cells: int = Field(8, ge=1, le=64, description="map-elites: cells per descriptor axis")
    islands: int = Field(1, ge=1, le=64, description="sub-populations with their own templates")
    migration_interval: int = Field(4, ge=1, description="islands: cycles between migrations")
    migrants: int = Field(1, ge=0, description="islands: best templates sent to the next island")
    mutation: Literal["schedule", "temperature"] = Field(
        "schedule",
        description="temperature: mutate at schedule.rate; the schedule sets the temperature",
    )
    temperature_span: float = Field(
        0.0, ge=0, le=10, description="temperature: temperature added per unit of schedule change"
    )
    replay: float = Field(
        0.0, ge=0, le=1, description="share of the fine-tuning set replayed from earlier selections"
    )
    replay_window: int = Field(
        0, ge=0, description="replay: earlier cycles drawn from (0: every earlier cycle)"
    )
    accumulate: bool = Field(
        False, description="fine-tune on every earlier selection (within replay_window) too"
    )
    elite_share: float = Field(
        0.0, ge=0, le=0.5, description="share of the population: children of the best so far"
    )
    elite_rate: float = Field(
        0.1, ge=0, le=1, description="elite_share: chance each of their tokens is rewritten"
    )

    def stateful(self) -> list[str]:
        """The interventions that carry state across cycles (checkpoints do not hold it)."""
        return [
            name
            for name, on in (
                ("qd", self.qd != "off"),
                ("islands", self.islands > 1),
                ("replay", self.replay > 0),
                ("accumulate", self.accumulate),
                ("elitism", self.elite_share > 0),
            )
            if on
        ]


class ScheduleConfig(StrictModel):
    """Mutation rate per cycle; see schedules.py for the closed forms."""

    kind: Literal["constant", "linear", "cosine", "cyclic"] = Field(
        "constant", description="mutation-rate schedule"
    )
    rate: float = Field(0.86, ge=0, le=1, description="start (and constant) rate")
    min_rate: float = Field(0.72, ge=0, le=1, description="floor of decays and cyclic")
    max_rate: float = Field(1.0, ge=0, le=1, description="peak of the cyclic schedule")
    period: int = Field(4, ge=2, description="cycles per cyclic period")
    shape: Literal["triangular", "cosine"] = Field(
        "triangular", description="cyclic shape: Smith 2017 triangle or SGDR warm restarts"
    )


class FitnessConfig(StrictModel):
    kind: Literal["auto", "nk", "first-epoch", "benchmark"] = Field(
        "auto",
        description="nk landscape; first-epoch accuracy on digits (grounded); benchmark's "
        "measured accuracy (nasbench-graph); auto = benchmark there, else nk",
    )
    k: int = Field(1, ge=0, le=4, description="NK epistasis: neighbours each position reads")
    epochs: int = Field(1, ge=1, le=100, description="first-epoch: training epochs")
    workers: int = Field(
        0, ge=0, le=256, description="first-epoch: training processes (0: one per core)"
    )
    max_train: int = Field(0, ge=0, description="first-epoch: cap on training images (0 = all)")


class TrackingConfig(StrictModel):
    """Where a finished run is logged (docs/tracking.md); it never changes a result."""

    backend: Literal["none", "mlflow"] = Field(
        "none", description="log each finished run to MLflow (`--track` overrides)"
    )
    uri: str = Field(
        "", description="mlflow: tracking URI (empty: $MLFLOW_TRACKING_URI, else MLflow's default)"
    )
    experiment: str = Field("archrefine", description="mlflow: experiment name")


class CheckpointConfig(StrictModel):
    """How often `archrefine run` saves the loop's state (docs/lifecycle.md); never a result."""

    every_s: float = Field(
        30.0, ge=0, description="seconds between checkpoints (0: every cycle; the last always)"
    )


class Config(OverridableModel):
    """A whole run. `trials` independent replicates share nothing but the seed's root."""

    label: ClassVar[str] = "simulator config"
    others: ClassVar[tuple[tuple[str, tuple[str, ...], str], ...]] = (
        ("real-loop config",
         ("evaluate", "prompt", "novelty", "generator.model", "generator.base_url",
          "generator.api", "generator.lora", "generator.max_new_tokens"),
         "archrefine loop, or archrefine config --loop"),
    )  # fmt: skip

    trials: int = Field(100, ge=1, le=100_000, description="independent replicates, batched")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="root of every random draw (< 2**63)")
    space: SpaceConfig = SpaceConfig()
    generator: GeneratorConfig = GeneratorConfig()
    loop: LoopConfig = LoopConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    fitness: FitnessConfig = FitnessConfig()
    tracking: TrackingConfig = TrackingConfig()
    intervention: InterventionConfig = InterventionConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _fitness_fits_space(self) -> Config:
        steer = self.intervention
        if steer.islands > 1 and steer.qd != "off":
            raise ValueError("intervention: islands and qd are not combined; choose one")
        if steer.islands > min(self.loop.top_k, self.loop.population):
            raise ValueError(
                f"intervention.islands ({steer.islands}) must not exceed loop.top_k "
                f"({self.loop.top_k}): every island keeps at least one template"
            )
        if steer.accumulate and steer.replay > 0:
            raise ValueError("intervention: replay and accumulate are not combined; choose one")
        if steer.accumulate and self.generator.kind != "paper":
            raise ValueError(
                "intervention.accumulate needs generator.kind 'paper' (the learned generator "
                "already fine-tunes on every earlier selection)"
            )
        if steer.islands > self.loop.population - round(steer.elite_share * self.loop.population):
            raise ValueError(
                f"intervention.islands ({steer.islands}) must not exceed the candidates left "
                "after intervention.elite_share: every island proposes at least one"
            )
        if self.generator.kind == "learned" and self.space.kind != "grounded":
            raise ValueError("generator.kind 'learned' needs space.kind = 'grounded'")
        if self.generator.bonus_growth == "set" and self.generator.kind != "paper":
            raise ValueError("generator.bonus_growth 'set' needs generator.kind 'paper'")
        kind, space = self.fitness.kind, self.space.kind
        if kind == "benchmark" and space != "nasbench-graph":
            raise ValueError("fitness.kind 'benchmark' needs space.kind = 'nasbench-graph'")
        if kind == "first-epoch" and space != "grounded":
            raise ValueError("fitness.kind 'first-epoch' needs space.kind = 'grounded'")
        if kind == "nk" and space == "nasbench-graph":
            raise ValueError("the nasbench-graph space scores by its measurements: use 'auto'")
        return self


def validate_config(data: dict[str, Any], model: type[BaseModel] | None = None) -> Any:
    """`data` validated as `model` (the simulator's `Config` unless given); one-line errors."""
    return validate_as(data, model or Config)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    model: type[OverridableModel] | None = None,
) -> Any:
    """Load a TOML file (or the defaults when `path` is None) and apply `key=value` overrides;
    `model` is the config class (the simulator's `Config` unless given)."""
    return load_as(model or Config, path, overrides)


def reference_table(model: type[BaseModel] | None = None) -> str:
    """The configuration reference as a Markdown table (the README embeds this output)."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str, defaults: BaseModel | None) -> None:
        # defaults come from the parent's default instance: a section may set its own values
        for name, field in model.model_fields.items():
            ann = field.annotation
            default = getattr(defaults, name, None) if defaults is not None else None
            if default is None:
                default = field.get_default(call_default_factory=True)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.", default)
                continue
            allowed = _allowed(field)
            doc = field.description or ""
            rows.append(f"| `{prefix}{name}` | `{default!r}` | {allowed} | {doc} |")

    root = model or Config
    walk(root, "", root())
    return "\n".join(rows)


def _allowed(field: Any) -> str:
    args = getattr(field.annotation, "__args__", None)
    if args and all(isinstance(a, str) for a in args):
        return ", ".join(args)
    bounds = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sym} {getattr(meta, attr)}")
    kind = getattr(field.annotation, "__name__", str(field.annotation))
    return f"{kind} {', '.join(bounds)}".strip()
