// The chat page: POST /v1/streams, then read the stream with EventSource, which reconnects by
// itself and sends Last-Event-ID, so the relay replays what the page missed. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("ask"), usage = $("usage"), stateView = $("state");
const sendButton = $("send"), stopButton = $("stop"), apiKey = $("api-key");
let current = null; // {source, cancelUrl}

// The tool the "Offer a tool" option sends: enough for a model (or the mock) to show a call.
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["city"],
    },
  },
};

apiKey.value = sessionStorage.getItem("token-relay-api-key") || "";
apiKey.addEventListener("change", () => sessionStorage.setItem("token-relay-api-key", apiKey.value));

// What the stream has said so far, as the reader sees it: reasoning (collapsed), the text, a
// refusal, the tool calls. Parts only ever append (a replay after a reconnect starts after the
// last event seen), so each text goes into one Text node with appendData, never re-set.
const answer = (() => {
  const reasoning = $("reasoning"), reasoningSummary = reasoning.querySelector("summary");
  const content = $("answer"), refusal = $("refusal"), calls = $("tool-calls");
  let reasoningText, contentText, refusalText, callsByIndex;

  function textIn(element) {
    element.textContent = "";
    return element.appendChild(document.createTextNode(""));
  }

  function thought() {
    if (!reasoning.hidden) reasoningSummary.textContent = "Reasoning";
  }

  // An answer that is only tool calls or a refusal has no text: no empty box for it.
  function noText() {
    if (contentText.length === 0) content.hidden = true;
  }

  function call(index) {
    let shown = callsByIndex.get(index);
    if (shown) return shown;
    const block = document.createElement("div");
    block.className = "tool-call";
    block.dataset.index = index;
    const head = block.appendChild(document.createElement("div"));
    head.className = "tool-head";
    head.appendChild(document.createTextNode("Calls "));
    const name = head.appendChild(document.createElement("code"));
    name.className = "tool-name";
    const id = head.appendChild(document.createElement("small"));
    id.className = "tool-id";
    const args = block.appendChild(document.createElement("pre"));
    args.className = "tool-arguments";
    shown = { block, name, id, args, argsText: textIn(args), raw: "" };
    callsByIndex.set(index, shown);
    calls.appendChild(block);
    return shown;
  }

  return {
    reset() {
      reasoning.hidden = true;
      reasoning.open = false;
      reasoningSummary.textContent = "Thinking…";
      reasoning.querySelectorAll(".redacted").forEach((note) => note.remove());
      reasoningText = textIn($("reasoning-text"));
      content.hidden = false;
      contentText = textIn(content);
      refusal.hidden = true;
      refusalText = textIn($("refusal-text"));
      calls.textContent = "";
      callsByIndex = new Map();
    },
    reasoning(part) {
      reasoning.hidden = false;
      reasoningSummary.textContent = "Thinking…";
      reasoningText.appendData(part.text);
    },
    redactedReasoning() {
      reasoning.hidden = false;
      const note = reasoning.appendChild(document.createElement("p"));
      note.className = "redacted";
      note.textContent = "A thinking block the model server sent redacted.";
    },
    token(part) {
      thought();
      content.hidden = false;
      contentText.appendData(part.text);
    },
    refusal(part) {
      thought();
      noText();
      refusal.hidden = false;
      refusalText.appendData(part.text);
    },
    toolCall(part) {
      thought();
      noText();
      const shown = call(part.index);
      if (part.name != null) shown.name.textContent = part.name;
      if (part.id != null) shown.id.textContent = part.id;
      shown.raw += part.arguments;
      shown.argsText.appendData(part.arguments);
    },
    // The stream has ended (or stopped): arguments that are whole JSON are pretty-printed; the
    // others (a call cut off by the token limit, or by an error) stay as they came, marked.
    settle() {
      thought();
      for (const shown of callsByIndex.values()) {
        if (shown.raw.trim() === "") {
          shown.block.classList.add("no-arguments");
          shown.args.textContent = "(no arguments)";
          continue;
        }
        try {
          shown.args.textContent = JSON.stringify(JSON.parse(shown.raw), null, 2);
        } catch {
          shown.block.classList.add("incomplete");
          shown.id.textContent += " (arguments incomplete)";
        }
      }
    },
  };
})();

function describeUsage(done) {
  const u = done.usage;  // null when the model server reported none; its details too
  if (!u) return `usage not reported (finish reason: ${done.finish_reason})`;
  const reasoningTokens = u.completion_tokens_details && u.completion_tokens_details.reasoning_tokens;
  const cachedTokens = u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens;
  const generated = `${u.completion_tokens ?? "?"} tokens generated${reasoningTokens ? `, ${reasoningTokens} of them reasoning` : ""}`;
  const prompt = `${u.prompt_tokens ?? "?"} in the prompt${cachedTokens ? `, ${cachedTokens} of them cached` : ""}`;
  return `${generated}, ${prompt} (finish reason: ${done.finish_reason})`;
}

function setState(state, message) {
  stateView.dataset.state = state;
  const labels = { idle: "Ready", connecting: "Connecting…", streaming: "Streaming", reconnecting: "Reconnecting…", done: "Done", stopped: "Stopped", error: "Error" };
  stateView.textContent = message ? `${labels[state]}: ${message}` : labels[state];
  const busy = state === "connecting" || state === "streaming" || state === "reconnecting";
  sendButton.disabled = busy;
  stopButton.disabled = !busy;
}

function finish(state, message) {
  if (current) current.source.close();
  answer.settle();
  current = null;
  setState(state, message);
}

async function ask(event) {
  event.preventDefault();
  answer.reset();
  usage.textContent = "";
  setState("connecting");
  const model = $("model").value.trim();
  const prompt = $("prompt").value;
  // Tools need the chat body (as for /v1/chat/completions), which names its model.
  const withTools = $("tools").checked;
  if (withTools && !model) return finish("error", "offering a tool needs a model name (Options, Model)");
  const body = withTools ? { model, messages: [{ role: "user", content: prompt }], tools: [WEATHER_TOOL] } : { prompt };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  if (model) body.model = model;
  const headers = { "content-type": "application/json" };
  if (apiKey.value) headers.authorization = `Bearer ${apiKey.value}`;
  let created;
  try {
    const response = await fetch("/v1/streams", { method: "POST", headers, body: JSON.stringify(body) });
    created = await response.json();
    if (!response.ok) return finish("error", created.error ? created.error.message : `HTTP ${response.status}`);
  } catch (err) {
    return finish("error", `the relay cannot be reached (${err.message})`);
  }
  const source = new EventSource(created.events_url);
  current = { source, cancelUrl: created.cancel_url };
  source.addEventListener("open", () => setState("streaming"));
  source.addEventListener("reasoning", (e) => answer.reasoning(JSON.parse(e.data)));
  source.addEventListener("redacted_reasoning", () => answer.redactedReasoning());
  source.addEventListener("token", (e) => answer.token(JSON.parse(e.data)));
  source.addEventListener("refusal", (e) => answer.refusal(JSON.parse(e.data)));
  source.addEventListener("tool_call", (e) => answer.toolCall(JSON.parse(e.data)));
  // logprobs events are kept in the stream for programs; the page does not show them.
  source.addEventListener("done", (e) => {
    usage.textContent = describeUsage(JSON.parse(e.data));
    finish("done");
  });
  // "error" is both the relay's terminal event (a MessageEvent with data) and EventSource's own
  // signal that the connection dropped (a plain Event): the first ends the stream, the second
  // means the browser is reconnecting, or gave up.
  source.addEventListener("error", (e) => {
    if (typeof e.data === "string") {
      const error = JSON.parse(e.data);
      return finish(error.code === "cancelled" ? "stopped" : "error", error.message);
    }
    if (source.readyState === EventSource.CLOSED) return finish("error", "the connection was refused");
    setState("reconnecting");
  });
}

async function stop() {
  if (!current) return;
  stopButton.disabled = true;
  try {
    await fetch(current.cancelUrl, { method: "DELETE" });
  } catch (err) {
    finish("error", `could not stop the stream (${err.message})`);
  }
}

form.addEventListener("submit", ask);
stopButton.addEventListener("click", stop);
answer.reset();
setState("idle");
