// The chat page: POST /v1/streams, then read the stream with EventSource, which reconnects by
// itself and sends Last-Event-ID, so the relay replays what the page missed. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("ask"), answer = $("answer"), usage = $("usage"), stateView = $("state");
const sendButton = $("send"), stopButton = $("stop"), apiKey = $("api-key");
let current = null; // {source, cancelUrl}

apiKey.value = sessionStorage.getItem("token-relay-api-key") || "";
apiKey.addEventListener("change", () => sessionStorage.setItem("token-relay-api-key", apiKey.value));

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
  current = null;
  setState(state, message);
}

async function ask(event) {
  event.preventDefault();
  answer.textContent = "";
  usage.textContent = "";
  setState("connecting");
  const body = { prompt: $("prompt").value };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  if ($("model").value.trim()) body.model = $("model").value.trim();
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
  source.addEventListener("token", (e) => { answer.textContent += JSON.parse(e.data).text; });
  source.addEventListener("done", (e) => {
    const done = JSON.parse(e.data);
    const u = done.usage;  // null when the model server reported none
    const counts = u ? `${u.completion_tokens ?? "?"} tokens generated, ${u.prompt_tokens ?? "?"} in the prompt` : "usage not reported";
    usage.textContent = `${counts} (finish reason: ${done.finish_reason})`;
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
setState("idle");
