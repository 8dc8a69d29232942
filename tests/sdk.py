"""The official ``openai`` SDK as the reference client: how it reassembles a stream, and what of a message the tests compare.

``reassembled`` feeds chunks to the SDK's own ``ChatCompletionStreamState`` (what its
``.stream()`` helper uses) and takes its snapshot (``get_final_completion`` raises on a
``length`` finish); ``view`` keeps what a client reads of a completion (content,
reasoning under either name, refusal, tool calls by index, logprobs, finish reasons, usage)
and leaves out what the relay writes itself (id, created, model, system_fingerprint).
``""`` and ``None`` are one value there for the texts: a server's first chunk may carry
``"content": ""`` before a tool call, the relay's carries no content then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openai import LengthFinishReasonError, OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.hostile import LAST_CHUNK, Conn, chunk, chunked_head, chunked_response

FIXTURES = Path(__file__).parent / "streaming" / "upstreams" / "fixtures"
# The OpenAI-protocol fixtures the SDK can read directly: not an error, nor Ollama's /v1 calls without an index (it raises on them).
SDK_FIXTURES = sorted(
    path.name for path in FIXTURES.glob("*.sse") if path.name.startswith(("openai-", "vllm-")) and path.name != "openai-vllm-error.sse"
)


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI stream body (``[DONE]`` left out)."""
    lines = [line for event in body.replace(b"\r\n", b"\n").split(b"\n\n") for line in event.split(b"\n")]
    return [json.loads(line[5:]) for line in lines if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]


def reassembled(chunks: list[dict[str, Any]]) -> ChatCompletion:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for part in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(part))
    return state.current_completion_snapshot


def completion_asked(base_url: str, mode: str, **kwargs: Any) -> tuple[Any, str | None]:
    """What the SDK makes of the answer to ``kwargs``, asked ``mode`` (streamed and accumulated, with the ``.stream()``
    helper, or whole), and the name of what the helper raised, if anything."""
    raised = None
    with OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10) as client:
        if mode == "stream":
            state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
            for part in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
                state.handle_chunk(part)
            completion: Any = state.current_completion_snapshot
        elif mode == "helper":
            with client.chat.completions.stream(stream_options={"include_usage": True}, **kwargs) as stream:
                try:
                    completion = stream.get_final_completion()
                except LengthFinishReasonError as exc:  # the helper's way with a length finish, direct or not
                    completion, raised = exc.completion, type(exc).__name__
        else:
            completion = client.chat.completions.create(**kwargs)
    return completion, raised


def _text(value: object) -> object:
    return value or None


def view(completion: ChatCompletion) -> dict[str, Any]:
    choices = []
    for choice in sorted(completion.choices, key=lambda choice: choice.index):
        message = choice.message
        extra = message.model_extra or {}
        calls = [
            {"id": call.id, "type": call.type, "name": call.function.name, "arguments": call.function.arguments}
            for call in message.tool_calls or [] if call.type == "function"
        ]
        choices.append({
            "index": choice.index,
            "content": _text(message.content),
            "reasoning": _text(extra.get("reasoning_content") or extra.get("reasoning")),
            "refusal": _text(message.refusal),
            "tool_calls": calls or None,
            "logprobs": choice.logprobs.model_dump() if choice.logprobs is not None else None,
            "finish_reason": choice.finish_reason,
        })
    usage = completion.usage.model_dump() if completion.usage is not None else None
    return {"choices": choices, "usage": usage}


async def replaying_fixtures(conn: Conn) -> None:
    """A ``HostileUpstream`` script: the fixture the request's ``model`` names, as it is to a streaming request,
    and as the completion it adds up to (the SDK's own reading of it) to a ``stream: false`` one."""
    while request := await conn.read_request():
        asked = json.loads(request.partition(b"\r\n\r\n")[2])
        body = (FIXTURES / (asked["model"] + ".sse")).read_bytes()
        if asked.get("stream"):
            await conn.write(chunked_response(body))
        else:
            whole = json.dumps(reassembled(sse_chunks(body)).model_dump(mode="json")).encode()
            await conn.write(chunked_head(content_type="application/json") + chunk(whole) + LAST_CHUNK)
