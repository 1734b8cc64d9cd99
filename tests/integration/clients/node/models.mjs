// Drives a server of several models (IMGEDIT_MODELS) with the official `openai` package for Node.js:
// lists the models, then edits with each model named in MODELS (comma-separated). Prints one JSON
// object: the listed ids, and for each edit its model and the bytes of its image.
import fs from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({ apiKey: "unused", baseURL: `${process.env.IMGEDIT_URL}/v1`, maxRetries: 0 });
const listed = [];
for await (const model of client.models.list()) listed.push({ id: model.id, onDevice: model.on_device ?? null });
const edits = [];
for (const model of process.env.MODELS.split(",")) {
  const response = await client.images.edit({
    model,
    image: fs.createReadStream(process.env.IMAGE),
    prompt: "make it snow",
    size: "64x64",
  });
  edits.push({ model, bytes: Buffer.from(response.data[0].b64_json, "base64").length });
}
console.log(JSON.stringify({ listed, edits }));
