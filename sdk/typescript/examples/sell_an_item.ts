/**
 * The customer's flow: one photo of an item for sale in, its category, price and similar items out.
 *
 *   node dist/examples/sell_an_item.js photo.jpg [http://127.0.0.1:8000]
 *
 * Prints one JSON object: {job, category, price: {value, currency, low, high}, similar: [ids]}.
 */
import { readFile } from "node:fs/promises";

import { createServingClient, submitJob, waitForJob } from "../src/index.js";

const [photoPath, baseUrl] = process.argv.slice(2);
if (!photoPath) {
  console.error("usage: sell_an_item.js PHOTO [BRIDGE_URL]");
  process.exit(2);
}
const client = createServingClient({ baseUrl, apiKey: process.env.SERVING_API_KEY });
const photo = await readFile(photoPath);
const job = await submitJob(client, photo, { models: ["classifier", "price", "similar"] });
const done = await waitForJob(client, job.id, { onProgress: (j) => console.error(`job ${j.id}: ${j.status}`) });
if (done.status !== "succeeded") {
  console.error(`the job failed: ${done.error}`);
  process.exit(1);
}
const results = done.results ?? {};
const answer = (model: string): Record<string, any> => (results[model]?.output ?? {}) as Record<string, any>;
console.log(JSON.stringify({
  job: done.id,
  category: answer("classifier").predictions?.[0]?.label ?? null,
  price: {
    value: answer("price").price ?? null, currency: answer("price").currency ?? null,
    low: answer("price").interval?.low ?? null, high: answer("price").interval?.high ?? null,
  },
  similar: (answer("similar").items ?? []).map((item: { id: string }) => item.id),
}));
