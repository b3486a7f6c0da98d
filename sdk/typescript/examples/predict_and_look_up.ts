/**
 * One prediction, then its record in the history and the model's latency report: the typed routes as they are.
 *
 *   node dist/examples/predict_and_look_up.js photo.jpg [http://127.0.0.1:8000]
 */
import { readFile } from "node:fs/promises";

import { createServingClient, predict } from "../src/index.js";

const [photoPath, baseUrl] = process.argv.slice(2);
if (!photoPath) {
  console.error("usage: predict_and_look_up.js PHOTO [BRIDGE_URL]");
  process.exit(2);
}
const client = createServingClient({ baseUrl, apiKey: process.env.SERVING_API_KEY });
const { answer, requestId, version } = await predict(client, "classifier", await readFile(photoPath));

// The record of that request: the results API, filtered and typed (items: ResultItem[]).
let recorded = null;
for (let attempt = 0; attempt < 50 && !recorded; attempt++) {
  const { data } = await client.GET("/v1/results", { params: { query: { model: "classifier", limit: 20 } } });
  recorded = data?.items.find((item) => item.request_id === requestId) ?? null;
  if (!recorded) await new Promise((resolve) => setTimeout(resolve, 200));
}
const { data: latency } = await client.GET("/v1/reports/latency", { params: { query: { model: "classifier" } } });
console.log(JSON.stringify({
  request_id: requestId, version, answer,
  recorded: recorded && { status: recorded.status, top_label: recorded.top_label, latency_ms: recorded.latency_ms },
  latency_rows: latency?.rows.length ?? 0,
}));
