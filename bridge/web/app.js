// "Sell an item": a photo → POST /v1/jobs?models=… (the raw photo) → GET /v1/jobs/{id}?wait=… until it is done →
// one panel per model: the category, the price with its interval, the similar catalogue items.
// Plain ES module, no build step; it talks to the bridge it was served by (docs/bridge-api.md#the-web-page-at-).

const POLL_WAIT_S = 25; // a long poll's wait: at most 30 s, the bridge's limit
const MAX_RETRIES = 4; // busy (429, 503) or no answer: retried this many times, then the user is told
const MAX_RETRY_AFTER_S = 30; // a longer Retry-After is waited this long at most before the next try
const FINISHED = new Set(["succeeded", "failed"]);
const TITLES = { classifier: "Category", price: "Price", similar: "Similar items" };

const $ = (id) => document.getElementById(id);
let config = null;
let running = null; // the AbortController of the photo being handled: a new photo cancels the previous one

class PageError extends Error {
  /** A message for the user, and what kind of problem it is (data-kind of the message, for styles and tests). */
  constructor(message, kind = "error", detail = "") {
    super(message);
    this.kind = kind;
    this.detail = detail;
  }
}

// ---- the page's settings ----------------------------------------------------------------------------------------

async function loadConfig() {
  const response = await fetch("/web/config.json", { cache: "no-store" });
  if (!response.ok) throw new PageError(`This page could not load its settings (HTTP ${response.status}).`);
  return response.json();
}

function apiHeaders(extra = {}) {
  const headers = { ...extra };
  if (config.api_key) headers["X-API-Key"] = config.api_key;
  return headers;
}

// ---- formatting -------------------------------------------------------------------------------------------------

function megabytes(bytes) {
  const mb = bytes / 1_000_000;
  return `${mb >= 10 ? Math.round(mb) : mb.toFixed(1).replace(/\.0$/, "")} MB`;
}

function money(amount, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(amount);
  } catch {
    return `${Number(amount).toFixed(2)} ${currency || ""}`.trim();
  }
}

function percent(score) {
  return `${Math.round(score * 100)}%`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: answers are data, not markup
  return node;
}

// ---- what the user sees -----------------------------------------------------------------------------------------

function setStatus(text, state, progress) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
  const bar = $("progress");
  if (progress === null) bar.removeAttribute("value"); // indeterminate: waiting
  else if (progress !== undefined) bar.value = progress;
}

function showMessage(text, kind, detail = "") {
  const message = $("message");
  message.replaceChildren(element("strong", "", text));
  if (detail) message.append(element("span", "detail", detail));
  message.dataset.kind = kind;
  message.hidden = false;
}

function reset() {
  $("message").hidden = true;
  $("message").replaceChildren();
  $("results").hidden = true;
  $("results").replaceChildren();
  $("job").hidden = true;
  $("job-id").textContent = "";
  $("progress-area").hidden = true;
  setStatus("", "idle", 0);
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
}

function showPreview(file) {
  $("preview").src = URL.createObjectURL(file);
  $("progress-area").hidden = false;
}

function showPanels(models) {
  const results = $("results");
  results.replaceChildren(
    ...models.map((model) => {
      const panel = element("article", "panel");
      panel.id = `panel-${model}`;
      panel.dataset.state = "pending";
      panel.append(element("h2", "", TITLES[model] || model), element("p", "pending", "Waiting for the answer…"));
      return panel;
    }),
  );
  results.hidden = false;
}

// ---- checks before anything is sent ------------------------------------------------------------------------------

function checkFile(file) {
  if (file.size === 0) return new PageError("This file is empty: choose a photo.", "not-a-photo");
  if (file.size > config.max_body_bytes) {
    return new PageError(
      `This photo is too large: ${megabytes(file.size)}, and the limit is ${megabytes(config.max_body_bytes)} ` +
        `(${config.max_body_bytes} bytes).`,
      "too-large",
      "Choose a smaller photo, or take it at a lower resolution. Nothing was uploaded.",
    );
  }
  if (file.type && !file.type.startsWith("image/")) {
    return new PageError(`This file is not a photo (${file.type}): choose a JPEG or PNG image.`, "not-a-photo");
  }
  return null;
}

// ---- talking to the bridge ---------------------------------------------------------------------------------------

function parsed(status, header, text) {
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status, header, json, text };
}

function upload(url, file, headers, signal, onProgress) {
  // XMLHttpRequest rather than fetch: it reports the upload's progress (a phone's photo on a slow network).
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    xhr.onload = () => resolve(parsed(xhr.status, (name) => xhr.getResponseHeader(name), xhr.responseText));
    xhr.onerror = () => reject(new PageError("The photo could not be sent: no answer from the service.", "network"));
    xhr.onabort = () => reject(new DOMException("cancelled", "AbortError"));
    signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(file);
  });
}

async function get(url, signal) {
  let response;
  try {
    response = await fetch(url, { headers: apiHeaders(), signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new PageError("No answer from the service.", "network");
  }
  return parsed(response.status, (name) => response.headers.get(name), await response.text());
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("cancelled", "AbortError"));
    }, { once: true });
  });
}

function retryAfterSeconds(answer, attempt) {
  const raw = (answer.header("Retry-After") || "").trim();
  let seconds = /^\d+$/.test(raw) ? Number(raw) : (Date.parse(raw) - Date.now()) / 1000; // seconds or an HTTP date
  if (!Number.isFinite(seconds)) seconds = 2 ** attempt; // none given: 2, 4, 8, 16 s
  return Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil(seconds)));
}

async function countdown(seconds, say, signal) {
  for (let left = seconds; left > 0; left -= 1) {
    setStatus(say(left), "busy", null);
    await sleep(1000, signal);
  }
}

/** ``call()`` again while the service is busy (429, 503: after its Retry-After) or does not answer, a few times. */
async function withRetries(call, signal) {
  for (let attempt = 1; ; attempt += 1) {
    let answer;
    try {
      answer = await call();
    } catch (error) {
      if (error.name === "AbortError" || attempt > MAX_RETRIES) throw error;
      const wait = 2 ** attempt;
      const say = (s) => `No answer from the service, retrying in ${s} s (retry ${attempt} of ${MAX_RETRIES})`;
      await countdown(wait, say, signal);
      continue;
    }
    // 409 + Retry-After: a retried submission whose first try is still being stored (same Idempotency-Key).
    const busy = answer.status === 429 || answer.status === 503
      || (answer.status === 409 && answer.header("Retry-After"));
    if (busy && attempt <= MAX_RETRIES) {
      const wait = retryAfterSeconds(answer, attempt);
      await countdown(wait, (s) => `The service is busy, retrying in ${s} s (retry ${attempt} of ${MAX_RETRIES})`,
        signal);
      continue;
    }
    return answer;
  }
}

/** A PageError for an answer that is not what was hoped for: what went wrong, in the user's words. */
function refusal(answer) {
  const body = answer.json || {};
  const said = body.message || (answer.text || "").slice(0, 200) || `HTTP ${answer.status}`;
  const reference = body.request_id ? ` (reference ${body.request_id})` : "";
  switch (answer.status) {
    case 400:
    case 415:
    case 422:
      return new PageError("This file was refused: it is not a photo we can use.", "not-a-photo", said + reference);
    case 413:
      return new PageError("This photo is too large for the service.", "too-large", said + reference); // its limit
    case 401:
    case 403:
      return new PageError(config.api_key ? "The service refused this page's access key: tell the site's operator."
        : "The service asks for an access key and this page has none: tell the site's operator.", "unauthorized",
      said + reference);
    case 429:
    case 503:
      return new PageError(`The service is busy: still busy after ${MAX_RETRIES} retries. Try again in a minute.`,
        "busy", said + reference);
    default:
      return new PageError(`Something went wrong (HTTP ${answer.status}). Try again.`, "error", said + reference);
  }
}

async function submit(file, signal) {
  // crypto.getRandomValues, not randomUUID: a phone on the LAN reaches the page over plain HTTP (no secure context).
  const random = crypto.getRandomValues(new Uint8Array(16));
  const key = `web-${Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  const headers = apiHeaders({ "Content-Type": file.type || "application/octet-stream", "Idempotency-Key": key });
  const url = `/v1/jobs?models=${config.models.join(",")}`; // a retry with the same key gets the same job back
  const answer = await withRetries(() => {
    setStatus("Uploading the photo…", "uploading", 0);
    return upload(url, file, headers, signal, (share) => {
      setStatus(`Uploading the photo… ${Math.round(share * 100)}%`, "uploading", Math.round(share * 40));
    });
  }, signal);
  if (answer.status !== 200 && answer.status !== 202) throw refusal(answer);
  return answer.json;
}

function showJobState(job) {
  if (job.status === "queued" && job.next_attempt_at) {
    const when = new Date(job.next_attempt_at).toLocaleTimeString();
    setStatus(`A model is unavailable for the moment; trying again by itself at ${when}…`, "waiting", null);
  } else if (job.status === "queued") {
    setStatus("Queued: your photo is next…", "queued", 50);
  } else {
    setStatus("Finding the category, the price and similar items…", "running", 75);
  }
}

async function poll(job, signal) {
  while (!FINISHED.has(job.status)) {
    showJobState(job);
    const answer = await withRetries(() => get(`/v1/jobs/${job.id}?wait=${POLL_WAIT_S}`, signal), signal);
    if (answer.status !== 200) throw refusal(answer);
    job = answer.json;
  }
  return job;
}

// ---- the answers -------------------------------------------------------------------------------------------------

/** A model's refusal, in the user's words (the model's own reason beside it). */
function modelProblem(status) {
  if (status === 400 || status === 415) return "Not a photo this model can read.";
  if (status === 413) return "The photo is too large for this model.";
  if (status === 422) return "The photo has too many pixels for this model.";
  if (status === 404) return "This model is not available.";
  if (status >= 500) return "This model is unavailable right now; try again later.";
  return `This model could not answer (HTTP ${status}).`;
}

const RENDER = {
  classifier(output) {
    const [top, ...others] = output.predictions || [];
    if (!top) return [element("p", "answer", "No category")];
    const list = element("ul", "others");
    for (const p of others.slice(0, 3)) list.append(element("li", "", `${p.label} · ${percent(p.score)}`));
    return [element("p", "answer", top.label), element("p", "detail", `${percent(top.score)} sure`), list];
  },
  price(output) {
    const nodes = [element("p", "answer", money(output.price, output.currency))];
    if (output.interval) {
      const { low, high, coverage } = output.interval;
      const range = `${money(low, output.currency)} – ${money(high, output.currency)}`;
      const text = `Likely ${range}${coverage ? ` (${percent(coverage)} interval)` : ""}`;
      nodes.push(element("p", "interval", text));
    }
    return nodes;
  },
  similar(output) {
    const items = output.items || [];
    if (!items.length) return [element("p", "answer", "No similar items")];
    const list = element("ol", "items");
    for (const item of items) {
      const row = element("li", "item");
      const distance = element("span", "detail", `distance ${Number(item.distance).toFixed(2)}`);
      row.append(element("code", "item-id", item.id), distance);
      list.append(row);
    }
    return [list];
  },
};

function fillPanel(model, result) {
  const panel = $(`panel-${model}`);
  const title = element("h2", "", TITLES[model] || model);
  if (!result) {
    panel.dataset.state = "error";
    panel.replaceChildren(title, element("p", "problem", "No answer from this model."));
  } else if (result.status >= 200 && result.status < 300) {
    panel.dataset.state = "ok";
    const render = RENDER[model] || ((output) => [element("pre", "", JSON.stringify(output, null, 2))]);
    panel.replaceChildren(title, ...render(result.output || {}));
  } else {
    panel.dataset.state = "error";
    panel.dataset.status = String(result.status);
    panel.replaceChildren(title, element("p", "problem", modelProblem(result.status)),
      element("p", "detail", result.error || `HTTP ${result.status}`));
  }
}

function showJob(job) {
  const results = job.results || {};
  for (const model of config.models) fillPanel(model, results[model]);
  const answered = config.models.filter((m) => results[m] && results[m].status < 300).length;
  if (job.status === "succeeded" && answered === config.models.length) {
    setStatus("Done.", "done", 100);
  } else if (job.status === "succeeded") {
    setStatus(`Done: ${answered} of ${config.models.length} answers (see each one).`, "done", 100);
  } else {
    const refused = Object.values(results).filter((r) => r.status >= 400 && r.status < 500);
    if (refused.length && refused.length === Object.keys(results).length) {
      setStatus("Done: the photo was refused.", "failed", 100);
      const what = refused.every((r) => r.status === 400 || r.status === 415) ? "it is not a photo we can read"
        : modelProblem(refused[0].status).replace(/\.$/, "").toLowerCase();
      showMessage(`This file was refused: ${what}.`, "not-a-photo", refused[0].error || "");
    } else {
      setStatus("Stopped: no answer.", "failed", 100);
      showMessage("We could not handle this photo right now. Try again later.", "error", job.error || "");
    }
  }
}

// ---- one photo, start to end -------------------------------------------------------------------------------------

async function sell(file) {
  running?.abort();
  const controller = new AbortController();
  running = controller;
  reset();
  const problem = checkFile(file);
  if (problem) {
    showMessage(problem.message, problem.kind, problem.detail);
    return;
  }
  showPreview(file);
  try {
    const job = await submit(file, controller.signal);
    $("job-id").textContent = job.id;
    $("job").hidden = false;
    showPanels(config.models);
    showJob(await poll(job, controller.signal));
  } catch (error) {
    if (error.name === "AbortError") return;
    const known = error instanceof PageError ? error : new PageError("Something went wrong in this page.", "error",
      String(error));
    setStatus("Stopped.", "failed", 100);
    showMessage(known.message, known.kind, known.detail);
  } finally {
    if (running === controller) running = null;
  }
}

async function main() {
  try {
    config = await loadConfig();
  } catch (error) {
    showMessage(error instanceof PageError ? error.message : "This page could not load its settings.", "error");
    return;
  }
  for (const input of [$("camera"), $("choose")]) {
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      if (file) sell(file);
      input.value = ""; // the same photo can be chosen again
    });
  }
  $("again").addEventListener("click", () => {
    running?.abort();
    reset();
    window.scrollTo({ top: 0, behavior: "smooth" });
  });
  document.body.dataset.ready = "true";
}

main();
