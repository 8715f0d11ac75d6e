"""Configuration of a real loop (`archrefine loop CONFIG.toml`): pydantic, TOML, one-line errors.

The defaults run anywhere in minutes: the learned generator (no model to download) writing
code for the bundled digits, evaluated in the sandbox. A real study changes `generator.kind`
to `hf` (a local model directory) or `openai` (a server), as in configs/real-*.toml.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from archrefine.core.config import SEED_MAX, LearnedConfig, ScheduleConfig, TrackingConfig
from archrefine.core.config_base import OverridableModel, StrictModel


class LoraConfig(StrictModel):
    """`hf` only: the LoRA adapter trained each cycle (continuing the previous cycle's)."""

    rank: int = Field(8, ge=1, le=1024, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="adapter scaling numerator (alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1, description="adapter dropout")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate")
    epochs: int = Field(1, ge=1, le=100, description="passes over the cumulative set per cycle")
    batch_size: int = Field(4, ge=1, le=4096, description="pairs per optimizer step")
    max_length: int = Field(1024, ge=16, description="tokens per training pair (truncated)")
    target_modules: list[str] = Field(
        default_factory=list, description="modules to adapt (empty: peft's default for the model)"
    )


class RealGeneratorConfig(StrictModel):
    kind: Literal["learned", "hf", "openai"] = Field(
        "learned", description="learned (built in), hf (local HF model), openai (a server)"
    )
    model: str = Field(
        "",
        description="hf: local model directory; openai: model name (empty: $OPENAI_MODEL, else "
        "the first model the server lists)",
    )
    base_url: str = Field(
        "", description="openai: server URL (empty: $OPENAI_BASE_URL, which must then be set)"
    )
    api: Literal["chat", "completions"] = Field("chat", description="openai: which endpoint")
    temperature: float = Field(0.8, ge=0.01, le=5, description="sampling temperature")
    temperature_span: float = Field(
        0.0, ge=0, le=5, description="temperature added per unit of mutation rate"
    )
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(50, ge=0, description="top-k sampling (0: off)")
    max_new_tokens: int = Field(1024, ge=16, le=32768, description="longest response, tokens")
    retries: int = Field(2, ge=0, le=20, description="resamples of a response with no code")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout")
    max_retries: int = Field(3, ge=0, le=20, description="openai: request retries (backoff)")
    concurrency: int = Field(4, ge=1, le=256, description="openai: requests in flight")
    device: str = Field("auto", description="hf: auto, cpu, cuda, cuda:1, …")
    lora: LoraConfig = LoraConfig()
    learned: LearnedConfig = LearnedConfig()

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError as err:
            raise ValueError(f"not a URL ({err})") from None
        if value and (parts.scheme not in ("http", "https") or not host):
            raise ValueError(
                "not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8000/v1)"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device_named(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
            raise ValueError("not a device: auto, cpu, mps, cuda or cuda:N")
        return value


class PromptConfig(StrictModel):
    template: str = Field(
        "", description="prompt template file ($-placeholders; empty: the built-in one)"
    )
    task: str = Field("image classification", description="what the network must do")
    dataset: str = Field(
        "scikit-learn's digits (8x8 grey images upsampled to 3x32x32), 10 classes",
        description="the data set, as the prompt describes it",
    )
    param_budget: int = Field(1_000_000, ge=1, description="parameter budget the prompt states")
    references: int = Field(3, ge=0, le=50, description="reference architectures per prompt")


class RealLoopConfig(StrictModel):
    cycles: int = Field(22, ge=1, le=10_000, description="refinement cycles")
    population: int = Field(20, ge=1, le=100_000, description="candidates per cycle")
    top_k: int = Field(5, ge=1, description="selected per cycle: references and fine-tune set")
    archive: Literal["all", "valid", "selected"] = Field(
        "all", description="which earlier candidates novelty and duplicates are judged against"
    )

    @model_validator(mode="after")
    def _k_fits(self) -> RealLoopConfig:
        if self.top_k > self.population:
            raise ValueError(f"top_k ({self.top_k}) must not exceed population ({self.population})")
        return self


class EvaluateConfig(StrictModel):
    backend: Literal["local", "ray"] = Field(
        "local", description="local: a warm sandbox pool; ray: one Ray task per candidate"
    )
    ray_address: str = Field("", description="ray: cluster address (empty: start a local Ray)")
    cpus_per_task: float = Field(1.0, gt=0, description="ray: CPUs each evaluation declares")
    gpus_per_task: float = Field(
        0.0,
        ge=0,
        description="GPUs each evaluation declares (ray); > 0: candidates build and train on CUDA",
    )
    workers: int = Field(
        2, ge=1, le=256, description="local: sandbox workers; ray: CPUs of a local Ray"
    )
    timeout_s: float = Field(120.0, gt=0, le=86400, description="wall-clock limit per candidate")
    memory_mb: int = Field(
        2048, ge=64, le=1_048_576, description="memory a candidate may add (64 MB to 1 TB)"
    )
    isolation: Literal["auto", "bwrap", "rlimits"] = Field(
        "auto", description="sandbox isolation (auto: bubblewrap when it works)"
    )
    train: bool = Field(
        True,
        description="train valid candidates (else: build, forward and one train-mode backward)",
    )
    epochs: int = Field(1, ge=1, le=100, description="training epochs (first-epoch accuracy)")
    lr: float = Field(1e-3, gt=0, description="training learning rate (Adam)")
    batch_size: int = Field(32, ge=2, description="training minibatch")
    max_train: int = Field(0, ge=0, description="cap on training images (0: all 1,347)")


class NoveltyConfig(StrictModel):
    shingle: int = Field(10, ge=1, le=1000, description="code tokens per MinHash shingle")
    num_perm: int = Field(256, ge=16, le=4096, description="MinHash permutations")
    threshold: float = Field(0.9, gt=0, le=1, description="Jaccard at which code is a duplicate")
    seed_known: bool = Field(True, description="seed the archive with KNOWN's sources")
    twins: bool = Field(True, description="the same network in other text is a duplicate too")


class RealConfig(OverridableModel):
    """A real refinement loop: one model, one run; seeds make sampling and training repeatable."""

    label: ClassVar[str] = "real-loop config"
    others: ClassVar[tuple[tuple[str, tuple[str, ...], str], ...]] = (
        ("simulator config",
         ("trials", "space", "fitness", "generator.base_logit", "generator.bonus_max",
          "loop.fresh_fraction", "loop.novelty_k"),
         "archrefine run, reproduce, sweep, robustness or config"),
    )  # fmt: skip

    seed: int = Field(0, ge=0, le=SEED_MAX, description="root of every random draw (< 2**63)")
    generator: RealGeneratorConfig = RealGeneratorConfig()
    prompt: PromptConfig = PromptConfig()
    loop: RealLoopConfig = RealLoopConfig()
    # the real loop keeps its own rates: the paper model's fitted ones are not a real model's
    schedule: ScheduleConfig = ScheduleConfig(rate=0.7, min_rate=0.33)
    evaluate: EvaluateConfig = EvaluateConfig()
    novelty: NoveltyConfig = NoveltyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _model_given(self) -> RealConfig:
        g = self.generator
        if g.kind == "hf" and not g.model:
            raise ValueError("generator.model: the hf generator needs a local model directory")
        if g.kind == "openai" and not (g.base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ValueError(
                "generator.base_url: empty and $OPENAI_BASE_URL is not set; name the server "
                "(e.g. http://127.0.0.1:8000/v1; https://api.openai.com/v1 for OpenAI itself)"
            )
        return self
