// Drives a devshard gateway through the official openai package, the way an
// external client would: list and retrieve models, stream a completion with
// usage, one plain completion, one with seed and stop (passed through to the
// executor) under the app's own x-request-id, and one with tools (refused
// with a 400 that names the parameter). Prints one JSON line on stdout;
// exits 1 on any error.
import OpenAI from "openai";

const model = "devshard-test-1";

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

async function main() {
  const client = new OpenAI({
    baseURL: env("OPENAI_BASE_URL"),
    apiKey: env("OPENAI_API_KEY"),
    maxRetries: 0,
  });

  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  if (!models.includes(model)) {
    throw new Error(`GET /models lists ${JSON.stringify(models)}, want it to include ${model}`);
  }

  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Say something about escrows." }],
    max_tokens: 24,
    stream: true,
    stream_options: { include_usage: true },
  });
  let streamText = "";
  let streamUsage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices ?? []) streamText += choice.delta?.content ?? "";
    if (chunk.usage) streamUsage = chunk.usage;
  }
  if (!streamUsage) throw new Error("stream ended without a usage chunk (stream_options.include_usage was set)");

  const done = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Say something about hosts." }],
    max_tokens: 24,
  });
  if (!done.choices?.length) throw new Error("non-streamed completion has no choices");

  const retrieved = await client.models.retrieve(model);
  if (retrieved.id !== model || retrieved.object !== "model") {
    throw new Error(`GET /models/${model} answered ${JSON.stringify(retrieved)}`);
  }

  // seed and stop are passed through; the app's request id comes back.
  const appRequestID = "devnet-openai-seeded";
  const seeded = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Say something about seeds." }],
    max_tokens: 24,
    seed: 7,
    stop: ["never in a devshard answer"],
  }, { headers: { "X-Request-Id": appRequestID } }).withResponse();
  if (seeded.request_id !== appRequestID) {
    throw new Error(`sent x-request-id ${appRequestID}, the answer carries ${seeded.request_id}`);
  }

  // A parameter the network cannot honour is refused, by name.
  let refused = null;
  try {
    await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Call a tool." }],
      max_tokens: 24,
      tools: [{ type: "function", function: { name: "lookup", parameters: { type: "object", properties: {} } } }],
    });
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    refused = { status: err.status, param: err.param, type: err.type, request_id: err.requestID };
  }
  if (!refused) throw new Error("a request with tools was answered; it must be refused");

  process.stdout.write(JSON.stringify({
    models,
    retrieved: retrieved.id,
    stream_text: streamText,
    stream_usage: streamUsage,
    text: done.choices[0].message?.content ?? "",
    usage: done.usage,
    request_id: done._request_id,
    seeded: {
      text: seeded.data.choices[0].message?.content ?? "",
      usage: seeded.data.usage,
      request_id: seeded.request_id,
    },
    refused,
  }) + "\n");
}

main().catch((err) => {
  console.error(err?.stack ?? String(err));
  process.exit(1);
});
