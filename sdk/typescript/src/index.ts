/**
 * The bridge's typed client, generated from bridge/openapi.json (`npm run generate` → src/schema.d.ts).
 *
 * `createServingClient()` is openapi-fetch's client over every route of the document: paths, parameters,
 * bodies and answers are checked by the compiler. The few helpers below cover what a document cannot type
 * well: a photo sent as raw bytes, and a job's long poll.
 */
import createClient, { type Client } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths };
export type ServingClient = Client<paths>;
export type Job = components["schemas"]["JobOut"];
export type ModelResult = components["schemas"]["ModelResult"];

/** A photo: its bytes (a Blob, a File from an <input type="file">, or a Uint8Array / Node Buffer). */
export type Photo = Blob | Uint8Array;

export interface ServingOptions {
  /** The bridge, e.g. "http://127.0.0.1:8000" (default). */
  baseUrl?: string;
  /** Sent as X-API-Key when the bridge requires keys. */
  apiKey?: string;
  /** Replaces the global fetch (tests, proxies). */
  fetch?: typeof globalThis.fetch;
}

/** A client of every route of the bridge, typed from its OpenAPI document. */
export function createServingClient(options: ServingOptions = {}): ServingClient {
  return createClient<paths>({
    baseUrl: options.baseUrl ?? "http://127.0.0.1:8000",
    headers: options.apiKey ? { "X-API-Key": options.apiKey } : undefined,
    fetch: options.fetch,
  });
}

/** The bridge's error envelope ({code, type, message, request_id}) as an exception. */
export class ServingError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly requestId?: string,
  ) {
    super(`${status} ${type}: ${message}`);
  }
}

function fail(response: Response, error: unknown): never {
  const body = (error ?? {}) as { type?: string; message?: string; request_id?: string; error?: string };
  throw new ServingError(response.status, body.type ?? "Error", body.message ?? body.error ?? response.statusText,
    body.request_id ?? response.headers.get("X-Request-Id") ?? undefined);
}

// Photos go as they are: the document types binary bodies as strings, so they are passed through unserialised.
const RAW = { bodySerializer: (photo: unknown) => photo as BodyInit };

/** One photo through `model` (its default version unless `version`); the model's answer and its request id. */
export async function predict(
  client: ServingClient, model: string, photo: Photo, version?: string,
): Promise<{ answer: unknown; requestId: string; version: string | null }> {
  const init = { body: photo as unknown as string, headers: { "Content-Type": "application/octet-stream" }, ...RAW };
  const { data, error, response } = version === undefined
    ? await client.POST("/predictions/{model}", { params: { path: { model } }, ...init })
    : await client.POST("/predictions/{model}/{version}", { params: { path: { model, version } }, ...init });
  if (!response.ok) fail(response, error);
  return { answer: data, requestId: response.headers.get("X-Request-Id") ?? "",
           version: response.headers.get("X-Model-Version") };
}

/** Submit one photo to several models as a durable job (default: every model of the product). */
export async function submitJob(
  client: ServingClient, photo: Photo, options: { models?: string[]; idempotencyKey?: string } = {},
): Promise<Job> {
  const { data, error, response } = await client.POST("/v1/jobs", {
    params: {
      query: options.models ? { models: options.models.join(",") } : {},
      header: options.idempotencyKey ? { "idempotency-key": options.idempotencyKey } : {},
    },
    body: photo as unknown as string,
    headers: { "Content-Type": "application/octet-stream" },
    ...RAW,
  });
  if (!data) fail(response, error);
  return data;
}

/** The job once finished (succeeded or failed), long-polling the bridge (`?wait=`) until `timeoutMs`. */
export async function waitForJob(
  client: ServingClient, id: string, options: { timeoutMs?: number; onProgress?: (job: Job) => void } = {},
): Promise<Job> {
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  for (;;) {
    const wait = Math.max(0, Math.min(30, (deadline - Date.now()) / 1000));
    const { data, error, response } = await client.GET("/v1/jobs/{job_id}", {
      params: { path: { job_id: id }, query: { wait } },
    });
    if (!data) fail(response, error);
    options.onProgress?.(data);
    if (data.status === "succeeded" || data.status === "failed") return data;
    if (Date.now() >= deadline) throw new ServingError(504, "JobTimeout", `job ${id} still ${data.status}`);
  }
}
