"""JobSpec: the single definition of a fine-tuning job's training spec.

The CLI (`tuneforge train SPEC`), the REST API (`POST /v1/fine_tuning/jobs`) and the
worker all validate through these models, so a job that cannot run is refused up front
with a message that names the field, not failed an hour into training.

Defaults follow DESIGN.md §6: nf4 + double quant, LoRA on every linear layer except
lm_head, a LoRA-range learning rate (2e-4, not the 2e-5 of full fine-tuning), dynamic
padding, completion-only loss.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

SPEC_VERSION = 1
# The built-in chat templates (core.training.chat_templates.BUILTIN holds their text); a
# name the worker would not know is refused here, at create, not after queueing.
CHAT_TEMPLATES = ("llama3", "chatml")
MAX_STEPS = 10_000_000  # any step count or interval: far above a real run, far below int overflow
TEMPLATE_TEXT = 64 * 1024  # characters of one template part
AUTO_BATCH_SIZE = 4  # `batch_size: auto`: rows per GPU per optimizer step (the old default)


class _Strict(BaseModel):
    """Unknown keys are errors: a typo such as `learning_rte` must not silently use a default.
    Floats must be finite: NaN and Infinity (which JSON parsers accept) are refused naming
    the field, and every number has an upper bound."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def template_fields(fmt: str) -> list[str]:
    """The column names a format string uses; refuses anything but plain `{column}`.

    Attribute access (`{x.__class__}`), indexing (`{x[0]}`), conversions (`{x!r}`) and
    format specs are rejected: a template comes from a client and must not reach into
    Python objects.
    """
    names: list[str] = []
    for _literal, field, spec, conversion in string.Formatter().parse(fmt):
        if field is None:
            continue
        if field == "" or not field.replace("_", "a").replace("-", "a").isalnum():
            raise ValueError(
                f"template placeholder {{{field}}} is not allowed: only plain {{column}} names "
                "(letters, digits, '_' or '-') may be used; write {{ or }} for a literal brace"
            )
        if conversion or spec:
            raise ValueError(f"template placeholder {{{field}}} may not use a conversion or format spec")
        names.append(field)
    return names


class TemplateSpec(_Strict):
    """How a row becomes a conversation when it is not already `messages` or prompt/completion."""

    prompt: str | None = Field(None, max_length=TEMPLATE_TEXT, description='User turn, e.g. "다음 글을 요약해주세요: {document}"')
    completion: str | None = Field(None, max_length=TEMPLATE_TEXT, description='Assistant turn, e.g. "{summary}"')
    system: str | None = Field(None, max_length=TEMPLATE_TEXT, description="Optional system turn (may use {column} too)")
    chat_template: Literal[CHAT_TEMPLATES] | None = Field(
        None,
        description="Name of a built-in chat template (e.g. 'llama3', 'chatml') used when the "
        "tokenizer has none, or to override it",
    )

    @field_validator("prompt", "completion", "system")
    @classmethod
    def _plain_placeholders(cls, v: str | None) -> str | None:
        if v is not None:
            template_fields(v)
        return v

    @model_validator(mode="after")
    def _both_or_neither(self) -> TemplateSpec:
        if (self.prompt is None) != (self.completion is None):
            raise ValueError("template.prompt and template.completion must be given together")
        return self

    def columns(self) -> list[str]:
        cols: list[str] = []
        for part in (self.system, self.prompt, self.completion):
            if part:
                cols += [c for c in template_fields(part) if c not in cols]
        return cols


class QuantizationSpec(_Strict):
    bits: Literal[4, 8] | None = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU"
    )


class LoraSpec(_Strict):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=256)] | Literal["all-linear"] = Field(
        "all-linear", description="Module names, or all-linear (every linear layer except lm_head)"
    )
    use_dora: bool = False
    use_rslora: bool = False


class Hyperparameters(_Strict):
    n_epochs: float = Field(3, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Optional cap on optimizer steps")
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto",
        description="Rows per GPU per optimizer step before gradient_accumulation_steps (auto: "
        f"{AUTO_BATCH_SIZE}). The micro-batch that runs at once is planned to fit the GPU "
        "(core.memory_plan); the effective batch never depends on the hardware",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "cosine"
    weight_decay: float = Field(0.0, ge=0, le=10.0)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    max_seq_length: int = Field(2048, ge=8, le=131072)
    packing: Literal["auto", True, False] = Field(
        "auto", description="auto: pack only where attention respects sequence boundaries"
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="auto: on only when the planned micro-batch does not fit the GPU without it"
    )
    checkpoint_every_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    completion_only_loss: bool = True
    truncation: Literal["prompt", "drop"] = Field(
        "prompt",
        description="A row longer than max_seq_length: 'prompt' trims the longest prompt-side value "
        "from its end (the completion and its terminator always survive); 'drop' skips the row",
    )

    @field_validator("packing", "gradient_checkpointing", mode="before")
    @classmethod
    def _bool_words(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        return v

    @property
    def batch_rows(self) -> int:
        """`batch_size` as a number: rows per GPU per optimizer step before accumulation."""
        return AUTO_BATCH_SIZE if self.batch_size == "auto" else self.batch_size

    @property
    def rows_per_gpu_step(self) -> int:
        """Rows each GPU contributes to one optimizer step: what the plan splits into
        micro-batches x accumulation (the same product whatever micro-batch fits)."""
        return self.batch_rows * self.gradient_accumulation_steps


RougeMetric = Literal["loss", "perplexity", "token_accuracy", "rouge"]


class EvaluationSpec(_Strict):
    eval_every_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    generation_samples: int = Field(8, ge=0, le=1000)
    max_new_tokens: int = Field(128, ge=1, le=8192)
    metrics: list[RougeMetric] = Field(default_factory=lambda: ["loss", "perplexity", "token_accuracy", "rouge"])
    max_samples: int = Field(
        64, ge=0, le=10000, description="Validation rows generated for ROUGE/exact match (the whole split when smaller)"
    )
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy decoding (the default)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling; only used when temperature > 0")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1.0: none")


class ResourcesSpec(_Strict):
    gpus: int = Field(1, ge=0, le=64, description="GPUs on one host; 0 means a CPU slot")
    min_gpu_memory_gb: float | None = Field(None, gt=0, le=100_000)


class DpoSpec(_Strict):
    """Direct Preference Optimization (`method.type: dpo`): the policy is the LoRA adapter, the
    reference the same base model with the adapter disabled."""

    beta: float = Field(
        0.1, gt=0, le=2.0, description="How far the tuned model may move from the reference (OpenAI's range: 0 < beta <= 2)"
    )


class MethodSpec(_Strict):
    """What the job trains on: `supervised` (chat / prompt-completion rows, the default) or `dpo`
    (preference pairs: `input`, `preferred_output`, `non_preferred_output`)."""

    type: Literal["supervised", "dpo"] = "supervised"
    dpo: DpoSpec | None = None

    @model_validator(mode="after")
    def _settings_match_type(self) -> MethodSpec:
        if self.type != "dpo" and self.dpo is not None:
            raise ValueError("method.dpo is only allowed with method.type 'dpo'")
        if self.type == "dpo" and self.dpo is None:
            self.dpo = DpoSpec()
        return self

    @property
    def is_default(self) -> bool:
        return self.type == "supervised"


DataRef = Annotated[str, Field(min_length=1, max_length=4096)]


class WandbSpec(_Strict):
    """OpenAI's `integrations[].wandb` object: where the run is logged. The API key is not
    here: the worker's own WANDB_API_KEY is used, so no client credential is ever stored."""

    project: str = Field(..., min_length=1, max_length=128)
    name: str | None = Field(None, min_length=1, max_length=128)
    entity: str | None = Field(None, min_length=1, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=50)

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Unset fields are left out, not null: OpenAI's schema types `tags` as an array, and
        the job echoes the object the client gave."""
        return {k: v for k, v in handler(self).items() if v is not None}


class IntegrationSpec(_Strict):
    """One entry of OpenAI's `integrations` list; "wandb" is the only type OpenAI defines."""

    type: Literal["wandb"]
    wandb: WandbSpec


class JobSpec(_Strict):
    """Everything a training run needs. `hash()` identifies it for resume and reproducibility."""

    model: str = Field(..., min_length=1, max_length=4096, description="Hub id or local directory")
    revision: str | None = Field(None, min_length=1, max_length=255)
    training_file: DataRef
    validation_file: DataRef | None = None
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    template: TemplateSpec = Field(default_factory=TemplateSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    suffix: str | None = Field(None, min_length=1, max_length=64, description="Any 1-64 characters (OpenAI's rule); made safe inside the model name")
    trust_remote_code: bool = False
    merge: bool = Field(False, description="Also write the adapter merged into a bf16/fp16 base")
    method: MethodSpec = Field(default_factory=MethodSpec)
    from_checkpoint: DataRef | None = Field(
        None,
        description="Start the LoRA adapter from this one instead of a fresh one: a directory holding a PEFT "
        "adapter (the API takes a job id or a checkpoint id and the worker fetches it there). The adapter's "
        "own LoRA settings then apply.",
    )
    integrations: list[IntegrationSpec] = Field(default_factory=list, max_length=16)

    @field_validator("integrations")
    @classmethod
    def _one_wandb_run(cls, v: list[IntegrationSpec]) -> list[IntegrationSpec]:
        """W&B logs to one current run per process (transformers' callback logs to `wandb.run`):
        two wandb integrations would write the same history twice into the first run."""
        if sum(i.type == "wandb" for i in v) > 1:
            raise ValueError("at most one wandb integration per job")
        return v

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Load YAML or JSON; relative data/model paths resolve against the spec's folder."""
        import yaml  # local: yaml is only needed by the CLI path

        p = Path(path)
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: a spec must be a mapping of fields, got {type(raw).__name__}")
        for key in ("model", "training_file", "validation_file"):
            val = raw.get(key)
            if isinstance(val, str) and "://" not in val and not Path(val).is_absolute():
                candidate = p.parent / val
                if candidate.exists():
                    raw[key] = str(candidate.resolve())
        return cls.model_validate(raw)

    def canonical_json(self) -> str:
        """The spec as sorted JSON. Defaults of fields added later (a supervised `method`, an
        unset `from_checkpoint`, no `integrations`) are left out, so that a spec written before
        they existed keeps its hash (and its checkpoints resume), and so does one written before
        `batch_size`/`gradient_checkpointing` took "auto"."""
        dumped = self.model_dump(mode="json")
        if self.method.is_default:
            dumped.pop("method")
        if self.from_checkpoint is None:
            dumped.pop("from_checkpoint")
        if not self.integrations:
            dumped.pop("integrations")
        # "auto" memory choices hash as the values they replaced: the effective batch is the
        # same, and checkpointing recomputes rather than changes the trajectory.
        hp = dumped["hyperparameters"]
        hp["batch_size"] = self.hyperparameters.batch_rows
        if hp["gradient_checkpointing"] == "auto":
            hp["gradient_checkpointing"] = False
        return json.dumps(dumped, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """Hash of what determines the training trajectory (resume only matches the same hash)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
