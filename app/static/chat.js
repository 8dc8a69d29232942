// The chat page: each turn POSTs the conversation so far to /v1/streams, then reads the stream
// with EventSource, which reconnects by itself and sends Last-Event-ID, so the relay replays
// what the page missed. No dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("ask"), usage = $("usage"), stateView = $("state"), prompt = $("prompt");
const sendButton = $("send"), stopButton = $("stop"), newChatButton = $("new-chat"), apiKey = $("api-key");
const modelPicker = $("model"), modelsNote = $("models-note");
let current = null; // {source, cancelUrl, message}: the turn being streamed
// The messages sent with the next turn: the turns that ended well, each a user message and the
// assistant's answer. A turn that failed or was stopped is shown, but left out of them.
let messages = [];

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
apiKey.addEventListener("change", () => {
  sessionStorage.setItem("token-relay-api-key", apiKey.value);
  loadModels();
});

function authHeaders() {
  return apiKey.value ? { authorization: `Bearer ${apiKey.value}` } : {};
}

// The picker lists GET /v1/models, the relay's default (its first entry) chosen; when the list
// cannot be had, the only choice is the relay's default and the note says why.
async function loadModels() {
  const chosen = modelPicker.value;
  let ids, failure;
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    const listed = await response.json();
    if (response.ok) ids = listed.data.map((entry) => entry.id);
    else failure = listed.error ? listed.error.message : `HTTP ${response.status}`;
  } catch (err) {
    failure = `the relay cannot be reached (${err.message})`;
  }
  modelPicker.textContent = "";
  for (const id of ids && ids.length ? ids : [""]) {
    const option = modelPicker.appendChild(document.createElement("option"));
    option.value = id;
    option.textContent = id || "the relay's default";
  }
  if (ids && ids.includes(chosen)) modelPicker.value = chosen;
  modelsNote.textContent = failure ? `(no model list: ${failure})` : "";
  modelPicker.dataset.loaded = failure ? "failed" : "listed";
}

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
    // What of the answer the next turn sends back: its text, else its refusal.
    said() {
      return contentText.data || refusalText.data;
    },
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
  newChatButton.disabled = busy;
}

// The turn shown below the conversation moves into it, as it was, once the next one starts.
const turns = (() => {
  const list = $("conversation"), turn = $("turn"), question = $("question");

  function archive() {
    if (question.hidden) return;
    const item = list.appendChild(document.createElement("li"));
    item.className = turn.className ? `turn ${turn.className}` : "turn";
    item.append(...turn.cloneNode(true).childNodes);
    item.querySelectorAll("[id]").forEach((element) => element.removeAttribute("id"));
  }

  return {
    start(text) {
      archive();
      turn.className = "";
      question.hidden = false;
      question.textContent = text;
      answer.reset();
      usage.textContent = "";
    },
    // A turn that failed or was stopped: marked, and its message back in the box to try again.
    leftOut(text) {
      turn.className = "left-out";
      if (!prompt.value) prompt.value = text;
    },
    clear() {
      list.textContent = "";
      turn.className = "";
      question.hidden = true;
      answer.reset();
      usage.textContent = "";
    },
  };
})();

function finish(state, message) {
  if (current) {
    current.source.close();
    if (state === "done") messages.push(current.message, { role: "assistant", content: answer.said() });
    else turns.leftOut(current.message.content);
  }
  answer.settle();
  current = null;
  setState(state, message);
}

async function ask(event) {
  event.preventDefault();
  const text = prompt.value;
  if (!text.trim() || current) return;
  const message = { role: "user", content: text };
  turns.start(text);
  setState("connecting");
  // Turns whose answer had no text (only tool calls the page cannot run) send nothing back for it.
  const sent = [...messages.filter((m) => m.content), message];
  const body = { messages: sent };
  const model = modelPicker.value;
  if (model) body.model = model;
  if ($("tools").checked) body.tools = [WEATHER_TOOL];
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const headers = { "content-type": "application/json", ...authHeaders() };
  let created;
  const failed = (why) => {
    turns.leftOut(text);
    setState("error", why);
  };
  try {
    const response = await fetch("/v1/streams", { method: "POST", headers, body: JSON.stringify(body) });
    created = await response.json();
    if (!response.ok) return failed(created.error ? created.error.message : `HTTP ${response.status}`);
  } catch (err) {
    return failed(`the relay cannot be reached (${err.message})`);
  }
  prompt.value = "";
  const source = new EventSource(created.events_url);
  current = { source, cancelUrl: created.cancel_url, message };
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

// Enter sends; Shift+Enter (or Enter while an input method composes) stays in the box as a new line.
prompt.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  if (!sendButton.disabled) form.requestSubmit();
});

function newChat() {
  messages = [];
  turns.clear();
  setState("idle");
}

form.addEventListener("submit", ask);
stopButton.addEventListener("click", stop);
newChatButton.addEventListener("click", newChat);
answer.reset();
setState("idle");
loadModels();
