"""The OpenAI API's shapes: request bodies (checked with pydantic), errors, responses and chunks.

Fields beyond the OpenAI API are this tool's generation parameters (top_k, repetition_penalty,
no_repeat_ngram_size, do_sample: what openai-python sends through extra_body), `conversation_id`
(which history conversation an exchange belongs to; the chat page sends it) and, on chat requests,
`chat_template` (a Jinja2 template for this request, as vLLM takes it). Unknown fields are ignored,
as OpenAI-compatible servers do, so clients that send logprobs=None or user=... still work.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatbot_llm.config import GenerationConfig
from chatbot_llm.errors import UsageError

MAX_STOPS = 8
MAX_CHOICES = 16


class ApiError(Exception):
    """An error answered in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)  # 0 is greedy, as in the OpenAI API
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # this tool's own parameters
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    do_sample: bool | None = None
    conversation_id: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def config(self, base: GenerationConfig, context_length: int) -> GenerationConfig:
        """This request's fields over the server's defaults (which hold the model's and the seed's)."""
        fields: dict[str, Any] = {}
        for name in ("top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "do_sample", "seed"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.max_tokens is not None:
            if self.max_tokens > context_length:
                raise ApiError(400, f"max_tokens is {self.max_tokens}, more than the model's context of "
                                    f"{context_length} tokens", param="max_tokens", code="max_tokens_too_large")
            fields["max_new_tokens"] = self.max_tokens
        if self.temperature == 0:
            fields["do_sample"] = False
        elif self.temperature is not None:
            fields["temperature"] = self.temperature
        try:
            return base.replace(**fields)
        except UsageError as exc:  # a combination pydantic cannot see (e.g. do_sample with the default temperature)
            raise ApiError(400, str(exc).replace("--", "").replace("-", "_"), code="invalid_value") from None


class CompletionRequest(_Common):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one prompt")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template: str | None = Field(None, max_length=65536)

    def model_post_init(self, _context) -> None:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens

    def message_dicts(self) -> list[dict[str, str]]:
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


def parse(kind: type[BaseModel], data: Any) -> Any:
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value") from None


# ---------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, response_id: str, model: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices,
            **extra}


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def chat_delta(index: int, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
