"""The OpenAI-compatible HTTP API of `weave serve` (FastAPI): `GET /v1/models`,
`POST /v1/chat/completions` and `POST /v1/completions`, streamed as server-sent events
(`data: {...}` chunks, then `data: [DONE]`) when the request asks, with an optional API key
(`Authorization: Bearer KEY`; 401 without it). Errors have OpenAI's shape
(`{"error": {"message", "type", "code"}}`), so OpenAI clients raise their usual exceptions.

Chat messages are rendered as in training (`_prompting.py`); `/v1/completions` takes the prompt
as raw text, as OpenAI's does. One answer is generated at a time (a lock): Hugging Face
`generate` serves one request per model.

Not a plugin (no entry point): a helper of `serve_command`, imported once fastapi is known to be
installed (the `serve` extra).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from axolotl_weave import WeaveError
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from axolotl_weave_plugins.inference._generation import (
    Generation,
    PromptTooLong,
    Sampling,
    generate,
)
from axolotl_weave_plugins.inference._images import has_images, vision_inputs
from axolotl_weave_plugins.inference._model import LoadedModel
from axolotl_weave_plugins.inference._prompting import Message


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


class ChatMessage(BaseModel):
    """A chat message; content as text or as OpenAI's list of text parts."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class SamplingRequest(BaseModel):
    """The sampling fields both endpoints take; the others OpenAI defines are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="One answer per request.")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    def sampling(self, defaults: Sampling) -> Sampling:
        """The server's defaults with this request's settings over them."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return defaults.with_overrides(
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(stops) or None,
        )

    @property
    def include_usage(self) -> bool:
        """Whether the stream ends with a usage chunk (`stream_options.include_usage`)."""
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(SamplingRequest):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions`."""

    prompt: str | list[str]

    def text(self) -> str:
        """The one prompt (a list must hold exactly one)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: give one prompt per request", "invalid_request_error")
        return self.prompt[0]


def usage(generation: Generation) -> dict[str, int]:
    """OpenAI's usage block."""
    total = generation.prompt_tokens + generation.completion_tokens
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": total,
    }


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class Api:
    """The endpoints' logic over one loaded model."""

    def __init__(self, loaded: LoadedModel, name: str, defaults: Sampling) -> None:
        self.loaded, self.name, self.defaults = loaded, name, defaults
        self.created = int(time.time())
        self.lock = threading.Lock()

    def model_card(self) -> dict[str, Any]:
        """The served model as `/v1/models` lists it."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "weave"}

    def check_model(self, request: SamplingRequest) -> None:
        """Refuse a request for another model (404, as OpenAI does)."""
        if request.model != self.name:
            raise ApiError(
                404,
                f"the model '{request.model}' does not exist; this server serves '{self.name}'",
                "invalid_request_error",
                "model_not_found",
            )

    def start(
        self, prompt_ids: list[int], request: SamplingRequest, extra: dict[str, Any] | None = None
    ) -> Generation:
        """A generation of the request, or a 400 for a prompt that does not fit."""
        try:
            return generate(self.loaded, prompt_ids, request.sampling(self.defaults), extra)
        except PromptTooLong as exc:
            raise ApiError(
                400, str(exc), "invalid_request_error", "context_length_exceeded"
            ) from None
        except Exception as exc:  # a bad sampling value (WeaveError)
            raise ApiError(400, str(exc), "invalid_request_error") from None

    def run(self, generation: Generation) -> Generation:
        """Generate the whole answer (one at a time)."""
        with self.lock:
            for _ in generation:
                pass
        return generation

    def stream(self, generation: Generation, chunk: Any, include_usage: bool) -> Iterator[str]:
        """Server-sent events: `chunk(text, finish_reason)` per piece, the finish, then usage
        (when asked) and `[DONE]`. Holds the lock while generating; leaving early stops it."""
        with self.lock:
            first = chunk(None, None)
            if first is not None:
                yield sse(first)
            pieces = iter(generation)
            try:
                for piece in pieces:
                    yield sse(chunk(piece, None))
            finally:
                pieces.close()  # type: ignore[attr-defined]
        yield sse(chunk("", generation.finish_reason))
        if include_usage:
            yield sse({**chunk("", None), "choices": [], "usage": usage(generation)})
        yield sse("[DONE]")

    def chat_prompt(self, request: ChatRequest) -> tuple[list[int], dict[str, Any]]:
        """The conversation's ids, rendered as in training, and the model inputs of its images
        (a vision-language model's processor turns those); it must end with a user turn."""
        messages = [Message(m.role, m.text()) for m in request.messages]
        if messages[-1].role != "user":
            raise ApiError(
                400, "messages: the last message must be the user's", "invalid_request_error"
            )
        raw = [m.model_dump() for m in request.messages]
        if not has_images(raw):
            try:
                return self.loaded.prompter.conversation_ids(messages), {}
            except WeaveError as exc:  # the chat template refused the conversation
                raise ApiError(400, f"messages: {exc}", "invalid_request_error") from None
        if self.loaded.processor is None:
            raise ApiError(
                400,
                f"messages: model '{self.name}' takes no images (serve a model trained with "
                "processor_type)",
                "invalid_request_error",
            )
        try:
            return vision_inputs(self.loaded.processor, raw)
        except WeaveError as exc:
            raise ApiError(400, f"messages: {exc}", "invalid_request_error") from None

    def chat(self, request: ChatRequest) -> dict[str, Any] | Iterator[str]:
        """`/v1/chat/completions`: the answer, or its event stream."""
        self.check_model(request)
        ids, extra = self.chat_prompt(request)
        generation = self.start(ids, request, extra)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": ""} if text is None else {}
                if text:
                    delta["content"] = text
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }

            return self.stream(generation, chunk, request.include_usage)
        self.run(generation)
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": usage(generation),
        }

    def complete(self, request: CompletionRequest) -> dict[str, Any] | Iterator[str]:
        """`/v1/completions`: the raw-text prompt's continuation, or its event stream."""
        self.check_model(request)
        tokenizer = self.loaded.tokenizer
        prompt_ids = list(tokenizer(request.text())["input_ids"])
        generation = self.start(prompt_ids, request)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def body(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": self.name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if request.stream:

            def chunk(text: str | None, finish: str | None) -> dict[str, Any] | None:
                return None if text is None else body(text, finish)

            return self.stream(generation, chunk, request.include_usage)
        self.run(generation)
        return {**body(generation.text, generation.finish_reason), "usage": usage(generation)}


def build_app(loaded: LoadedModel, name: str, defaults: Sampling, api_key: str | None) -> Any:
    """The FastAPI application serving `loaded` as model `name`; every `/v1` route asks for
    `api_key` when one is given. `GET /health` answers without it."""
    api = Api(loaded, name, defaults)

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise ApiError(
                401,
                "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                "invalid_request_error",
                "invalid_api_key",
            )

    app = FastAPI(title="weave serve", version="1")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse(
            ApiError(400, problems, "invalid_request_error").body(), status_code=400
        )

    def respond(result: dict[str, Any] | Iterator[str]) -> Any:
        if isinstance(result, dict):
            return result
        return StreamingResponse(result, media_type="text/event-stream")

    guarded = [Depends(authorized)]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=guarded)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    def model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise ApiError(404, f"the model '{model_id}' does not exist", "invalid_request_error")
        return api.model_card()

    @app.post("/v1/chat/completions", dependencies=guarded)
    def chat(request: ChatRequest) -> Any:
        return respond(api.chat(request))

    @app.post("/v1/completions", dependencies=guarded)
    def completions(request: CompletionRequest) -> Any:
        return respond(api.complete(request))

    return app
