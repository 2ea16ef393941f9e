"""Wire schemas: OpenAI-compatible requests and responses plus the maas-tune extension."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .._constants import MAX_TOKEN_FEATURES
from ..errors import MaasTuneError

__all__ = [
    "APIError",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "EmbeddingRequest",
    "ExtensionRequest",
    "ExtensionResult",
    "Logprobs",
    "Text",
    "TokenizeRequest",
    "Usage",
    "check_logit_bias",
    "stop_strings",
]

#: Most alternatives per position, as in OpenAI's legacy completions.
MAX_TOP_LOGPROBS = 20
#: Bound on the magnitude of one ``logit_bias`` entry (OpenAI's).
MAX_LOGIT_BIAS = 100.0
#: Most digits in a ``logit_bias`` key: more than any vocabulary needs, and far below
#: Python's 4300-digit limit on int(), which would otherwise raise a 500.
MAX_TOKEN_ID_DIGITS = 12
#: Seeds a torch generator accepts (the union of int64 and uint64).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


def check_logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    """Validate a ``logit_bias`` field (token-id keys, values in [-100, 100]); ValueError if not."""
    for key, value in (bias or {}).items():
        # isdigit() alone admits '²' and other digits that int() refuses (a 500).
        if not (key.isascii() and key.isdigit() and len(key) <= MAX_TOKEN_ID_DIGITS):
            raise ValueError(f"keys must be token ids as strings, got {key[:40]!r}")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ValueError(f"values must lie in [-100, 100], got {value} for {key!r}")
    return bias


def check_unicode(text: str) -> str:
    """Refuse a string that is not valid Unicode text (ValueError naming where it breaks).

    JSON's ``"\\ud800"`` escape decodes to a lone UTF-16 surrogate, which Python
    strings can hold but no tokenizer (nor UTF-8) can encode.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValueError(
            f"contains a lone surrogate {bad!r} at character {exc.start}, which is not valid "
            "Unicode; send UTF-8 text (a surrogate escape must be half of a pair)"
        ) from None
    return text


#: A string that the tokenizer can encode: every text field that reaches the model.
Text = Annotated[str, AfterValidator(check_unicode)]


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """A request's ``stop`` field (absent, one string or a list) as a tuple."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class APIError(MaasTuneError):
    """An error answered in OpenAI's shape ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ExtensionRequest(BaseModel):
    """The ``maas_tune`` request field: score label tokens right after the prompt."""

    model_config = ConfigDict(extra="forbid")

    label_token_ids: list[int] = Field(min_length=1)
    return_hidden: bool = False
    #: States of the prompt's last this-many tokens (0: none); Y-Tuning's keys.
    return_token_features: int = Field(0, ge=0, le=MAX_TOKEN_FEATURES)

    @field_validator("label_token_ids")
    @classmethod
    def _non_negative(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("token ids must be >= 0")
        return ids


class CompletionRequest(BaseModel):
    """``POST /v1/completions``; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    logit_bias: dict[str, float] | None = None
    stop: Text | list[Text] | None = None
    n: int = 1
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stream: bool | None = False
    user: str | None = None
    maas_tune: ExtensionRequest | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        return prompt

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(bias)

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.n != 1:
            raise ValueError("n: only n=1 is supported")
        if self.stream:
            raise ValueError("stream: streaming is not supported; send stream=false")
        if self.max_tokens == 0 and not (self.echo or self.maas_tune):
            raise ValueError("max_tokens: 0 is allowed only with echo=true or the maas_tune field")
        return self

    @property
    def prompts(self) -> list[str]:
        """The prompt(s) as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop string(s) as a tuple."""
        return stop_strings(self.stop)


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: Text | list[Text]
    encoding_format: Literal["float", "base64"] = "float"

    @property
    def inputs(self) -> list[str]:
        """The input(s) as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must be a string or a non-empty list of strings")
        return value


class TokenizeRequest(BaseModel):
    """``POST /extras/tokenize`` (the shape of llama-cpp-python's server)."""

    input: Text
    model: str | None = None


class Logprobs(BaseModel):
    """Per-token log-probabilities of one choice (parallel lists)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ExtensionResult(BaseModel):
    """The ``maas_tune`` field of a choice: label scores at the position after the prompt."""

    label_logprobs: list[float]
    hidden: str | None = Field(description="base64 of little-endian float32 bytes, shape (d,)")
    prompt_tokens: int
    token_features: str | None = Field(
        None, description="base64 of little-endian float16 bytes, shape token_features_shape"
    )
    token_features_shape: list[int] | None = Field(
        None, description="(m, d): the states of the prompt's last m <= N tokens, oldest first"
    )


class CompletionChoice(BaseModel):
    """One choice."""

    index: int
    text: str
    logprobs: Logprobs | None
    finish_reason: Literal["length", "stop"]
    maas_tune: ExtensionResult | None = None


class Usage(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionResponse(BaseModel):
    """``POST /v1/completions`` answer."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage

    def to_json(self) -> dict[str, Any]:
        """The JSON body; ``maas_tune`` is left out of choices when not requested."""
        body = self.model_dump()
        for choice in body["choices"]:
            if choice["maas_tune"] is None:
                del choice["maas_tune"]
            elif choice["maas_tune"]["token_features"] is None:  # not asked for
                ext = choice["maas_tune"]
                del ext["token_features"], ext["token_features_shape"]
        return body
