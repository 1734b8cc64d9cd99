// Drives a running imgedit server with the official `openai` package for Node.js, the way its
// users write it. IMGEDIT_URL is the server's address; IMAGE and MASK are PNG files. Prints one
// JSON object: what each call gave, for the Python test to check.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ apiKey: "unused", baseURL: `${process.env.IMGEDIT_URL}/v1`, maxRetries: 0 });
const image = () => fs.createReadStream(process.env.IMAGE);
const results = {};

async function record(name, run) {
  try {
    results[name] = await run();
  } catch (error) {
    results[name] = { error: error.constructor.name, status: error.status ?? null, message: error.message };
  }
}

const summary = (response) => ({
  count: response.data.length,
  size: response.size,
  quality: response.quality,
  outputFormat: response.output_format,
  bytes: response.data.map((item) => Buffer.from(item.b64_json, "base64").length),
  totalTokens: response.usage?.total_tokens ?? null,
});

await record("file", async () => {
  const { data, response } = await client.images
    .edit({ image: image(), prompt: "make it snow", size: "64x64", seed: 7 })
    .withResponse();
  return { ...summary(data), seeds: response.headers.get("x-imgedit-seeds") };
});
await record("list", async () =>
  summary(await client.images.edit({ image: [image(), image()], prompt: "two bears", size: "64x64", n: 2 })),
);
await record("buffer", async () => {
  const upload = await toFile(fs.readFileSync(process.env.IMAGE), "bear.png", { type: "image/png" });
  return summary(await client.images.edit({ image: upload, prompt: "a hat", output_format: "jpeg" }));
});
await record("mask", async () =>
  summary(await client.images.edit({ image: image(), mask: fs.createReadStream(process.env.MASK), prompt: "sky" })),
);
await record("stream", async () => {
  const stream = await client.images.edit({ image: image(), prompt: "rain", stream: true, partial_images: 1 });
  const types = [];
  for await (const event of stream) types.push(event.type);
  return { types };
});
await record("url", async () => {
  const linked = await client.images.edit({ image: image(), prompt: "a link", size: "64x64", response_format: "url" });
  const opened = await fetch(linked.data[0].url); // no API key: the signature is the credential
  return {
    inline: linked.data[0].b64_json ?? null,
    status: opened.status,
    type: opened.headers.get("content-type"),
    bytes: (await opened.arrayBuffer()).byteLength,
  };
});
await record("badSize", async () => client.images.edit({ image: image(), prompt: "p", size: "1024x" }));
await record("models", async () => {
  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  return { models };
});
console.log(JSON.stringify(results));
