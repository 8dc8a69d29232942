"""The embedded mock model server: every protocol the relay speaks, answering as real model servers do, with fault injection.

It answers a deterministic text for the last user message (TGI: the prompt), paced by
``ttft`` (time to first token), ``interval`` (between frames) and ``tokens`` (length when
the request's token limit does not cut it short), streamed or whole, in each protocol:
OpenAI ``POST …/chat/completions`` (openai.py), TGI ``POST …/generate_stream`` and
``…/generate`` (tgi.py), Ollama ``POST …/api/chat`` (ollama.py), Anthropic
``POST …/v1/messages`` (anthropic.py). Per request, headers ``x-mock-ttft``/``x-mock-interval``
(seconds) and ``x-mock-tokens`` override the pacing.

Beyond text, it answers what the request asks for, in each protocol's own shape (the modules'
docstrings say which; TGI's native API has text only):

- ``tools`` in the request: tool calls instead of text, by default two parallel ones (names
  from the request's tools, in turn; ids distinct; arguments a small JSON object of the
  declared parameters' types, derived from the prompt), their arguments split into fragments
  that stream interleaved, ending ``tool_calls``. ``tool_choice`` none gets text; a named
  tool is the one called; ``parallel_tool_calls: false`` gets one call.
- a tool result since the last user message (a ``tool`` message, Anthropic's ``tool_result``):
  a final text, ``the tool returned: <result>``.
- reasoning before the answer, of half as many words (``reasoning_content``, Anthropic's
  ``thinking`` with a signature, Ollama's ``thinking``), when chosen or when the request asks
  (``reasoning_effort``, Anthropic's ``thinking``, Ollama's ``think``).
- OpenAI only: ``logprobs`` (with ``top_logprobs``) on every content or refusal chunk, ``n``
  choices each with its own text, and a refusal in ``delta.refusal``.
- usage with details: half the prompt's words count as cached, in blocks of four (so a short
  prompt says 0); reasoning words are counted apart (OpenAI ``prompt_tokens_details`` and
  ``completion_tokens_details``, Anthropic ``cache_read_input_tokens``).

Chosen by model name ``mock-<option>``, a path segment ``/mock-<option>/`` (so that an upstream's
base URL can choose) or a header ``x-mock-<option>: <kind>`` (the header wins):

    mock-tools-parallel        (the default) two parallel calls, their fragments interleaved
    mock-tools-sequential      two parallel calls, one after the other (as OpenAI sends them: the
                               OpenAI SDK's .stream() helper needs that for strict tools)
    mock-tools-one             one call
    mock-tools-no-args         one call without arguments
    mock-tools-text-then-call  the text, then one call
    mock-tools-length          one call cut off halfway by the token limit: finish length
                               (any token limit cuts any answer: reasoning, text and call
                               fragments count as tokens)
    mock-reasoning             reasoning first (x-mock-reasoning: on)
    mock-reasoning-vllm        OpenAI: in vLLM's newer ``reasoning`` field
    mock-reasoning-redacted    Anthropic: and a redacted_thinking block after the thinking
    mock-refusal               a refusal instead of the answer (x-mock-refusal: on)
    mock-server-tgi            /chat/completions as TGI's Messages API answers it
    mock-fault-<kind>          a fault, below

Faults:

    http-500         500 with a JSON error, before the stream
    http-429         429 with Retry-After, before the stream
    error-midstream  an in-band error halfway (OpenAI: then [DONE])
    reset            the connection is dropped halfway
    no-done          the body ends halfway, without the protocol's end marker
    stall-head       no response head at all
    stall-first      head sent, no token ever
    stall-midstream  tokens stop halfway, the connection stays open
    malformed        a chunk that is not JSON, halfway

An unknown kind is answered 404 ``model_not_found``.

Every client disconnect before the response ends is recorded (monotonic and wall time,
request id, frames sent, the client's address); ``GET /mock/stats`` returns the records and the
request count.
"""

from __future__ import annotations

from app.mock.answer import mock_text
from app.mock.openai import decode_request
from app.mock.options import FAULTS, MODELS
from app.mock.server import MockModel
from app.mock.wire import prompt_of

__all__ = ["FAULTS", "MODELS", "MockModel", "decode_request", "mock_text", "prompt_of"]
