// Drives a devshard gateway through the official openai package, the way an
// external client would: list models, stream a completion with usage, then
// one plain completion. Prints one JSON line on stdout; exits 1 on any error.
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

  process.stdout.write(JSON.stringify({
    models,
    stream_text: streamText,
    stream_usage: streamUsage,
    text: done.choices[0].message?.content ?? "",
    usage: done.usage,
  }) + "\n");
}

main().catch((err) => {
  console.error(err?.stack ?? String(err));
  process.exit(1);
});
