// The Vercel AI SDK's default OpenAI provider (its Responses API model) against the relay.
// Usage: node client.mjs BASE_URL CASE; prints what the SDK made of the stream, as one JSON line.
import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";

const [baseURL, which] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "sk-test" });
const weather = (execute) => tool({
  description: "The weather in a city",
  inputSchema: jsonSchema({ type: "object", properties: { city: { type: "string" } }, required: ["city"] }),
  ...(execute ? { execute } : {}),
});
const cases = {
  text: { model: "mock", prompt: "hello there" },
  reasoning: { model: "mock-reasoning", prompt: "think about it" },
  tools: { model: "mock", prompt: "weather in Paris", tools: { get_weather: weather() } },
  // Two steps: the call, its result sent back (function_call and function_call_output items), the answer.
  roundtrip: {
    model: "mock", prompt: "weather in Paris", tools: { get_weather: weather(async ({ city }) => `sunny in ${city}`) },
    providerOptions: { openai: { parallelToolCalls: false } }, stopWhen: stepCountIs(2),
  },
  failure: { model: "mock-fault-error-midstream", prompt: "x" },
};
// A second turn after a text answer: by default the SDK refers to the answer by its item id (the relay keeps
// none: refused); with store: false it sends the answer itself.
async function secondTurn(providerOptions) {
  const first = streamText({ model: openai("mock"), maxRetries: 0, prompt: "hello there" });
  const earlier = (await first.response).messages;
  return { model: "mock", providerOptions, messages: [{ role: "user", content: "hello there" }, ...earlier, { role: "user", content: "and then?" }] };
}
if (which === "second-turn") cases[which] = await secondTurn({ openai: { store: false } });
if (which === "second-turn-stored") cases[which] = await secondTurn(undefined);
const { model, ...options } = cases[which];
const seen = { text: "", reasoning: "", calls: [], results: [], errors: [], finishReason: null, usage: null, requests: 0 };
const result = streamText({ model: openai(model), maxRetries: 0, onError: () => {}, ...options });
for await (const part of result.fullStream) {
  switch (part.type) {
    case "start-step": seen.requests += 1; break;
    case "text-delta": seen.text += part.text; break;
    case "reasoning-delta": seen.reasoning += part.text; break;
    case "tool-call": seen.calls.push({ id: part.toolCallId, name: part.toolName, input: part.input }); break;
    case "tool-result": seen.results.push(part.output); break;
    case "error": seen.errors.push(String(part.error?.message ?? part.error)); break;
    case "finish": seen.finishReason = part.finishReason; seen.usage = part.totalUsage; break;
  }
}
process.stdout.write(JSON.stringify(seen) + "\n");
