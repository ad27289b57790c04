"""The body of `POST /v1/fine_tuning/jobs`: OpenAI's fields plus our extensions, and its
mapping onto JobSpec.

OpenAI clients send `hyperparameters` ({n_epochs, batch_size, learning_rate_multiplier},
each possibly "auto") or the same under `method.supervised.hyperparameters`; the
extensions (template, lora, quantization, ...) reuse the JobSpec models, so the API and
the CLI accept exactly the same values. "auto" means our default, and the multiplier
scales our default LoRA learning rate, so `learning_rate_multiplier: 2` is 4e-4, not an
OpenAI-scale rate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, create_model, model_validator

from core.errors import InvalidRequest
from core.spec import (
    EvaluationSpec,
    Hyperparameters,
    IntegrationSpec,
    JobSpec,
    LoraSpec,
    QuantizationSpec,
    ResourcesSpec,
    TemplateSpec,
)

Auto = Literal["auto"]
_HP_FIELDS = Hyperparameters.model_fields
_DEFAULT_LR = _HP_FIELDS["learning_rate"].default
#: The largest multiplier the spec's learning-rate bound allows (OpenAI states only "> 0").
MAX_LR_MULTIPLIER = next(m.le for m in _HP_FIELDS["learning_rate"].metadata if getattr(m, "le", None)) / _DEFAULT_LR


def _auto_or(what: str) -> WrapValidator:
    """One plain message for an "auto"-or-number field, instead of one error per member of
    the union ("Input should be 'auto' (and 1 more problem)")."""

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f'must be "auto" or {what}, got {value!r}') from None

    return WrapValidator(check)


#: OpenAI's bounds for its three knobs (FineTuneSupervisedHyperparameters): stricter than the
#: spec's own (which the CLI uses) where OpenAI's are.
_OPENAI_KNOBS: dict[str, Any] = {
    "n_epochs": Annotated[Auto | Annotated[int, Field(ge=1, le=50)], _auto_or("an integer from 1 to 50")],
    "batch_size": Annotated[Auto | Annotated[int, Field(ge=1, le=256)], _auto_or("an integer from 1 to 256")],
}


def _optional_hyperparameters() -> dict[str, Any]:
    """Every JobSpec hyperparameter, optional and with its own constraints; OpenAI's three
    take OpenAI's types and bounds and may be "auto". Derived from the spec so the two can
    never disagree."""
    fields: dict[str, Any] = {}
    for name, info in _HP_FIELDS.items():
        typ: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (_OPENAI_KNOBS.get(name, typ) | None, None)
    return fields


class _HyperparametersBase(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    learning_rate_multiplier: Annotated[
        Auto | Annotated[float, Field(gt=0, le=MAX_LR_MULTIPLIER)], _auto_or(f"a number above 0 (at most {MAX_LR_MULTIPLIER:g})")
    ] | None = None

    def to_spec_fields(self) -> dict[str, Any]:
        """The values JobSpec.hyperparameters takes; "auto" and unset fall back to its defaults."""
        given = {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None and v != "auto"}
        multiplier = given.pop("learning_rate_multiplier", None)
        if multiplier is not None:
            if "learning_rate" in given:
                raise InvalidRequest(
                    "Give either learning_rate or learning_rate_multiplier, not both",
                    param="hyperparameters.learning_rate_multiplier",
                )
            given["learning_rate"] = _DEFAULT_LR * multiplier
        return given


HyperparametersRequest = create_model(
    "HyperparametersRequest",
    __base__=_HyperparametersBase,
    __doc__="OpenAI's three knobs (\"auto\" allowed) plus any JobSpec hyperparameter by its own name.",
    **_optional_hyperparameters(),
)


class SupervisedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hyperparameters: HyperparametersRequest | None = None


class DpoHyperparametersRequest(HyperparametersRequest):
    """The supervised knobs plus DPO's `beta` ("auto": our default)."""

    beta: Auto | Annotated[float, Field(gt=0, le=2.0)] | None = None

    def to_spec_fields(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_spec_fields().items() if k != "beta"}

    def dpo_fields(self) -> dict[str, Any]:
        return {} if self.beta in (None, "auto") else {"beta": self.beta}


class DpoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hyperparameters: DpoHyperparametersRequest | None = None


class MethodRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["supervised", "dpo", "reinforcement"] = Field(
        ..., description="supervised, or dpo (preference pairs); reinforcement is refused with a 400"
    )
    supervised: SupervisedRequest | None = None
    dpo: DpoRequest | None = None

    def refuse_unsupported(self) -> None:
        """OpenAI's `reinforcement` is a method this server does not run: a 400 that says so,
        rather than a validation error listing the types it does take."""
        if self.type == "reinforcement":
            raise InvalidRequest("method.type 'reinforcement' is not supported by this server", param="method.type")


def _find_nul(value: Any, path: str) -> str | None:
    """Where (a dotted path) the first string holding a NUL is, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and "\x00" in k:
            return sub
        if (found := _find_nul(v, sub)) is not None:
            return found
    return None


class JobCreateRequest(BaseModel):
    """What a client sends. Unknown keys are refused (422 naming the key), as in JobSpec."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # OpenAI fields.
    model: str = Field(..., min_length=1, max_length=4096)
    training_file: str = Field(..., min_length=1, max_length=4096)
    validation_file: str | None = Field(None, max_length=4096)
    hyperparameters: HyperparametersRequest | None = None
    method: MethodRequest | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64, description="Any 1-64 characters; made safe inside the model name")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = Field(
        None, description="Up to 16 pairs, keys up to 64 and values up to 512 characters (OpenAI's limits)"
    )
    integrations: list[IntegrationSpec] | None = Field(None, max_length=16)

    # Extensions (sent as extra_body by the OpenAI SDK).
    revision: str | None = Field(None, min_length=1, max_length=255)
    validation_split: float | None = Field(None, ge=0.0, lt=1.0)
    template: TemplateSpec | None = None
    lora: LoraSpec | None = None
    quantization: QuantizationSpec | None = None
    evaluation: EvaluationSpec | None = None
    resources: ResourcesSpec | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher runs earlier within a team's share")
    trust_remote_code: bool = False
    merge: bool = False
    from_checkpoint: str | None = Field(
        None, min_length=1, max_length=200, description="Start from this job's adapter (ftjob-...) or checkpoint (ftckpt-...)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        """A NUL cannot be stored in PostgreSQL text or JSON, nor name a path: refused here,
        naming where it is, rather than failing in the database."""
        where = _find_nul(data, "")
        if where is not None:
            raise ValueError(f"{where or 'body'}: text may not contain NUL (\\u0000) characters")
        return data

    def _check_method(self) -> None:
        """OpenAI's rules: `hyperparameters` at the top level is the deprecated place for
        method.supervised.hyperparameters, so giving both is a conflict, not a merge."""
        if self.method is None:
            return
        self.method.refuse_unsupported()
        sup = self.method.supervised
        if self.hyperparameters is not None and sup is not None and sup.hyperparameters is not None:
            raise InvalidRequest(
                "hyperparameters were given both at the top level (deprecated) and in method.supervised.hyperparameters; "
                "give them in one place",
                param="hyperparameters",
            )
        dpo = self.method.dpo
        if dpo is not None and self.method.type != "dpo":
            raise InvalidRequest("method.dpo is only allowed with method.type 'dpo'", param="method.dpo")
        if self.hyperparameters is not None and dpo is not None and dpo.hyperparameters is not None:
            raise InvalidRequest(
                "hyperparameters were given both at the top level (deprecated) and in method.dpo.hyperparameters; "
                "give them in one place",
                param="hyperparameters",
            )

    def effective_hyperparameters(self) -> HyperparametersRequest | None:
        if self.method and self.method.dpo and self.method.dpo.hyperparameters:
            return self.method.dpo.hyperparameters
        if self.method and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters

    def method_spec(self) -> dict[str, Any] | None:
        """JobSpec.method for a DPO request (None: supervised, the spec's default)."""
        if not self.method or self.method.type != "dpo":
            return None
        hp = self.method.dpo.hyperparameters if self.method.dpo else None
        return {"type": "dpo", "dpo": hp.dpo_fields() if hp else {}}

    def to_spec(self) -> JobSpec:
        """The JobSpec this request asks for; data references stay as given (file ids or hf://)."""
        self._check_method()
        hp = self.effective_hyperparameters()
        raw: dict[str, Any] = {
            "model": self.model,
            "training_file": self.training_file,
            "hyperparameters": hp.to_spec_fields() if hp else {},
            "trust_remote_code": self.trust_remote_code,
            "merge": self.merge,
        }
        if (method := self.method_spec()) is not None:
            raw["method"] = method
        if self.integrations:
            raw["integrations"] = [i.model_dump(mode="json") for i in self.integrations]
        for name in ("validation_file", "revision", "validation_split", "suffix", "seed", "from_checkpoint"):
            if getattr(self, name) is not None:
                raw[name] = getattr(self, name)
        for name in ("template", "lora", "quantization", "evaluation", "resources"):
            if getattr(self, name) is not None:
                raw[name] = getattr(self, name).model_dump()
        try:
            return JobSpec.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidRequest(f"{err['msg']}", param=".".join(str(p) for p in err["loc"]) or None) from None
