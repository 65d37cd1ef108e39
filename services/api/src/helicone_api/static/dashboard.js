// The Helicone dashboard: calls the api's /v1 routes with the key the user entered (kept in
// sessionStorage, so it lives as long as the tab) and renders what they answer. Every panel has a
// data-state (loading | ready | empty | unavailable | error) and a status line; a route this api
// does not serve (404) leaves its panel "not available" and the rest of the page working.
"use strict";

const KEY_STORAGE = "helicone-api-key";
const REQUEST_LIMIT = 100;
const LIST_LIMIT = 50;
// what an Authorization header can carry and any key can be: printable ASCII, no space
const API_KEY_FORM = /^[\x21-\x7e]+$/;

const $ = (sel, root = document) => root.querySelector(sel);

// details: the api's 422 problems, [{field, message}] (a field is a JSON path: "destination", "filter.user_id")
class ApiError extends Error {
  constructor(status, message, details = []) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + apiKey() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    let message = err.message || resp.statusText || "request failed";
    if (err.details) message += ": " + err.details.map((d) => `${d.field} ${d.message}`).join("; ");
    if (resp.status === 401) keyRefused(message);
    throw new ApiError(resp.status, message, Array.isArray(err.details) ? err.details : []);
  }
  return data;
}

// ---- formatting -------------------------------------------------------------------------------

const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
// a cost under a cent keeps 3 significant digits, written out (not "1.5e-7"): a cost never reads as $0.000000
const fmtUsd = (n) =>
  n === null || n === undefined ? "–"
    : n !== 0 && Math.abs(n) < 0.01 ? "$" + Number(n).toLocaleString("en-US", { maximumSignificantDigits: 3, maximumFractionDigits: 20 })
      : "$" + Number(n).toFixed(n >= 1 ? 2 : 6);
const fmtPct = (n) => (n === null || n === undefined ? "–" : (n * 100).toFixed(1) + "%");
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
// [key, value] pairs (properties, filters) in one order, whatever order the api's answer has them in
const byKey = ([a], [b]) => (a < b ? -1 : a > b ? 1 : 0);

// What a caller logged may hold characters that show nothing or reorder the text around them (controls, bidi
// embeddings, overrides, isolates and marks, zero-width spaces): each shows as its code point, so "\u202eecila"
// never reads as "alice" nor turns the numbers after it around, and "gpt\u200b-4o" is not "gpt-4o".
const HIDDEN_CHARS = /[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\u3164\ufeff\uffa0\ufff9-\ufffb]/g;
const shown = (v) => String(v).replace(HIDDEN_CHARS, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// A logged value in a table cell: any length, maybe without a space, it wraps anywhere and scrolls past a few lines
// (dashboard.css .value), never widening its table beyond the page.
const value = (v) => el("span", { class: "value", text: shown(v) });

function row(cells) {
  return el("tr", {}, ...cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) }))));
}

// ---- panels -----------------------------------------------------------------------------------

function setPanel(name, state, message = "") {
  const panel = $("#panel-" + name);
  panel.dataset.state = state;
  $(".panel-status", panel).textContent = shown(message); // an api's error may repeat a logged value
}

// Runs one panel's load: a 404 means this api does not serve the route (yet). Only the newest load
// of a panel renders: `load(current)` checks current() after each await, so a slow older answer
// never overwrites a newer one.
const panelLoads = {};
async function loadPanel(name, load, emptyMessage = "No data in this range.") {
  const seq = (panelLoads[name] = (panelLoads[name] || 0) + 1);
  const current = () => panelLoads[name] === seq;
  setPanel(name, "loading", "Loading…");
  try {
    const empty = await load(current);
    if (current()) setPanel(name, empty ? "empty" : "ready", empty ? emptyMessage : "");
  } catch (e) {
    if (!current()) return;
    if (e instanceof ApiError && e.status === 404) setPanel(name, "unavailable", "Not available: this api does not serve it yet.");
    else setPanel(name, "error", "Error: " + e.message);
  }
}

class Superseded extends Error {}

// Throws Superseded (ignored by loadPanel, which no longer owns the panel) when a newer load started.
function stillCurrent(current) {
  if (!current()) throw new Superseded();
}

const UNIT_MS = { quarter: 900 * 1000, hour: 3600 * 1000, day: 86400 * 1000 };

// The start of the quarter hour, hour or day holding t (ms), in the browser's zone (in UTC when `utc`, or when
// the api is sent UTC: timeZone()). Every zone's offset is whole quarter hours: a quarter hour is one in UTC too.
function floorTo(t, unit, utc = timeZone() === "UTC") {
  if (unit === "quarter") return Math.floor(t / UNIT_MS.quarter) * UNIT_MS.quarter;
  const d = new Date(t);
  if (unit === "day") utc ? d.setUTCHours(0, 0, 0, 0) : d.setHours(0, 0, 0, 0);
  else utc ? d.setUTCMinutes(0, 0, 0) : d.setMinutes(0, 0, 0);
  return d.getTime();
}

// The first boundary at or after t: one and a half units past the previous one lies in the next unit, whatever
// a summer time change makes of a day's length (23 to 25 hours).
function ceilTo(t, unit, utc = timeZone() === "UTC") {
  const f = floorTo(t, unit, utc);
  return f === t ? t : floorTo(f + 1.5 * UNIT_MS[unit], unit, utc);
}

function range() {
  const hours = Number($("#range").value);
  // starts and ends on a quarter hour, hour or midnight (by the range's length) of the browser's zone, the
  // boundaries of the chart's buckets there (the first and last one cover their whole time) and of the api's
  // pre-aggregated quarter hours and hours; rounded outwards, so the range holds every request of the span it names
  const unit = hours >= 168 ? "day" : hours >= 24 ? "hour" : "quarter";
  const now = Date.now();
  const start = new Date(floorTo(now - hours * 3600 * 1000, unit));
  const end = new Date(ceilTo(now, unit));
  const bucket = hours <= 1 ? "minute" : hours <= 168 ? "hour" : "day";
  return { start: start.toISOString(), end: end.toISOString(), bucket, unit };
}

// The range of the sessions and users lists: over days, widened to UTC midnights, the days the api's
// per-day totals of sessions and users hold (a range on another zone's midnight would read every request).
function listRange() {
  const r = range();
  if (r.unit !== "day") return r;
  const utcDay = (t, to) => new Date(to(Date.parse(t), "day", true)).toISOString();
  return { start: utcDay(r.start, floorTo), end: utcDay(r.end, ceilTo) };
}

// ---- charts -----------------------------------------------------------------------------------

const charts = {};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];

function drawChart(id, opts, data) {
  const box = document.getElementById(id);
  if (charts[id]) charts[id].destroy();
  box.dataset.points = String(data[0].length);
  const width = Math.max(box.clientWidth, 280);
  charts[id] = new uPlot({ width, height: 180, legend: { show: true }, ...opts }, data, box);
}

function timeChart(id, x, series) {
  drawChart(
    id,
    {
      // a series with fewer than 3 values (the rest null: buckets without requests) marks its points,
      // or a lone value would draw nothing
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 2,
        points: { show: s.values.filter((v) => v !== null && v !== undefined).length < 3, size: 7 },
      }))],
      scales: { x: { time: true } },
    },
    [x, ...series.map((s) => s.values)],
  );
}

// The browser's IANA zone. A TZ without a name (a POSIX rule such as "XYZ+3") is "Etc/Unknown", which the api
// refuses: a whole-hour offset has its Etc/GMT zone (sign reversed), any other falls back to UTC.
function timeZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && zone !== "Etc/Unknown") return zone;
  const offset = new Date().getTimezoneOffset();
  return offset && offset % 60 === 0 ? `Etc/GMT${offset > 0 ? "+" : "-"}${Math.abs(offset) / 60}` : "UTC";
}

async function loadTimeseries(current) {
  const r = range();
  const resp = await api("POST", "/v1/metrics/timeseries", { start: r.start, end: r.end, bucket: r.bucket, timezone: timeZone() });
  stillCurrent(current);
  // rows may come per group: sum them per bucket (latency takes the slowest group's percentile)
  // the range ends on a rounded time after now: the zero-filled buckets past now are no traffic yet, not none
  const now = Date.now() / 1000;
  const byBucket = new Map();
  for (const d of resp.data) {
    const t = Date.parse(d.bucket) / 1000;
    if (t > now) continue;
    const acc = byBucket.get(t) || { requests: 0, cost: 0, prompt: 0, completion: 0, p50: null, p95: null };
    acc.requests += d.requests;
    acc.cost += d.cost_usd || 0;
    acc.prompt += d.prompt_tokens;
    acc.completion += d.completion_tokens;
    const lat = d.latency_ms || {};
    if (lat.p50 !== null && lat.p50 !== undefined) acc.p50 = Math.max(acc.p50 ?? 0, lat.p50);
    if (lat.p95 !== null && lat.p95 !== undefined) acc.p95 = Math.max(acc.p95 ?? 0, lat.p95);
    byBucket.set(t, acc);
  }
  const x = [...byBucket.keys()].sort((a, b) => a - b);
  const col = (f) => x.map((t) => f(byBucket.get(t)));
  timeChart("chart-requests", x, [{ label: "requests", values: col((a) => a.requests) }]);
  timeChart("chart-cost", x, [{ label: "cost (USD)", values: col((a) => a.cost) }]);
  timeChart("chart-tokens", x, [
    { label: "prompt", values: col((a) => a.prompt) },
    { label: "completion", values: col((a) => a.completion) },
  ]);
  timeChart("chart-latency", x, [
    { label: "p50", values: col((a) => a.p50) },
    { label: "p95", values: col((a) => a.p95) },
  ]);
  return x.length === 0;
}

async function loadModels(current) {
  const r = range();
  const resp = await api("POST", "/v1/metrics/breakdown", { start: r.start, end: r.end, by: "model" });
  stillCurrent(current);
  const rows = [...resp.data].sort((a, b) => (b.cost_usd || 0) - (a.cost_usd || 0));
  const keys = rows.map((d) => d.key || "(none)");
  const x = keys.map((_, i) => i);
  drawChart(
    "chart-models",
    {
      scales: { x: { time: false, range: () => [-0.5, Math.max(keys.length, 1) - 0.5] } },
      axes: [{ splits: () => x, values: (u, splits) => splits.map((i) => (i in keys ? shown(keys[i]) : "")) }, {}],
      series: [{}, { label: "cost (USD)", fill: COLORS[0], stroke: COLORS[0], paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false } }],
      legend: { show: false },
    },
    [x, rows.map((d) => d.cost_usd || 0)],
  );
  const body = $("#models-table tbody");
  body.replaceChildren(
    ...rows.map((d) =>
      row([value(d.key || "(none)"), fmtInt(d.requests), fmtUsd(d.cost_usd), fmtInt(d.prompt_tokens + d.completion_tokens), fmtPct(d.error_rate), fmtInt(d.p95_latency_ms)]),
    ),
  );
  return rows.length === 0;
}

async function loadSummary(current) {
  const r = range();
  const q = new URLSearchParams({ start: r.start, end: r.end });
  const s = await api("GET", "/v1/metrics/summary?" + q);
  stillCurrent(current);
  const items = [
    ["Requests", fmtInt(s.requests)],
    ["Cost", fmtUsd(s.cost_usd)],
    ["Tokens", fmtInt(s.prompt_tokens + s.completion_tokens)],
    ["Error rate", fmtPct(s.error_rate)],
    ["Users", fmtInt(s.users)],
    ["Sessions", fmtInt(s.sessions)],
    ["Avg latency (ms)", fmtInt(s.avg_latency_ms)],
    ["p95 latency (ms)", fmtInt(s.p95_latency_ms)],
  ];
  $("#summary").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
  return false;
}

// ---- requests ---------------------------------------------------------------------------------

function requestFilter() {
  const form = $("#request-filters");
  const r = range();
  const filter = { start: r.start, end: r.end };
  for (const name of ["model", "provider", "user_id", "session_id"]) {
    const v = form.elements[name].value.trim();
    if (v) filter[name] = v;
  }
  const status = form.elements.status.value.trim();
  if (status) filter.status = Number(status);
  const prop = form.elements.property.value.trim();
  if (prop) {
    const at = prop.indexOf("=");
    if (at < 1) throw new ApiError(0, "Property filter: write key=value, e.g. environment=prod");
    filter.properties = { [prop.slice(0, at).trim()]: prop.slice(at + 1).trim() };
  }
  return { filter, limit: REQUEST_LIMIT, offset: 0, sort: form.elements.sort.value };
}

function scoresText(scores) {
  const entries = Object.entries(scores || {});
  return entries.length ? value(entries.map(([k, v]) => `${k}=${v}`).join(", ")) : "–";
}

function requestRow(d) {
  return row([
    fmtTime(d.created_at),
    d.model ? value(d.model) : "–",
    d.user_id ? value(d.user_id) : "–",
    d.status,
    fmtInt(d.latency_ms),
    fmtInt(d.usage.total_tokens),
    fmtUsd(d.cost_usd),
    scoresText(d.scores),
    el("button", { type: "button", class: "open-request", "data-request-id": d.request_id, "aria-label": "Open request " + d.request_id, text: "Open", onclick: () => openRequest(d.request_id) }),
  ]);
}

// The query of the table's pages and the api's next_cursor after the last one shown (null: no more rows).
// Each next page is asked with the very same query (its range too), as the cursor belongs to it.
let requestsMore = null;

function setRequestsMore(query, nextCursor) {
  requestsMore = query && nextCursor ? { query, cursor: nextCursor } : null;
  $("#requests-more").hidden = requestsMore === null;
  $("#requests-table").dataset.rows = String($("#requests-table tbody").rows.length);
}

async function loadRequests(current) {
  setRequestsMore(null, null); // a "load more" now would append to the table this load replaces
  const query = requestFilter();
  const resp = await api("POST", "/v1/request/query", query);
  stillCurrent(current);
  $("#requests-table tbody").replaceChildren(...resp.data.map(requestRow));
  setRequestsMore(query, resp.next_cursor);
  return resp.data.length === 0;
}

async function loadMoreRequests(current) {
  const { query, cursor } = requestsMore;
  const resp = await api("POST", "/v1/request/query", { ...query, cursor });
  stillCurrent(current);
  $("#requests-table tbody").append(...resp.data.map(requestRow));
  setRequestsMore(query, resp.next_cursor);
  return false;
}

function showBody(pre, body, error, encoding) {
  // a body the api could not read says why (request_body_error / response_body_error), not "(not stored)"
  const missing = error ? `(not available: ${error})` : "(not stored)";
  if (body === null || body === undefined) pre.textContent = missing;
  else if (encoding === "base64") { // binary (audio, an image, an upload holding one): its bytes as base64
    const bytes = (body.length / 4) * 3 - (body.endsWith("==") ? 2 : body.endsWith("=") ? 1 : 0);
    pre.textContent = `(binary, ${bytes} bytes, as base64)\n${body}`;
  } else pre.textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
}

async function openRequest(id) {
  const panel = $("#panel-detail");
  panel.hidden = false;
  $("#detail-id").textContent = shown(id);
  for (const node of panel.querySelectorAll("dl, ul, pre")) node.replaceChildren(); // not the previous request's
  resetForm($("#property-form"));
  detailRequestId = null; // set once this request's detail shows
  await loadPanel("detail", async (current) => {
    // this route is served: its 404 is a request this org does not have (yet), not a missing route
    const d = await api("GET", "/v1/request/" + encodeURIComponent(id)).catch((e) => {
      throw e instanceof ApiError && e.status === 404 ? new ApiError(0, e.message) : e;
    });
    stillCurrent(current);
    const meta = [
      ["Time", fmtTime(d.created_at)],
      ["Provider", shown(d.provider)],
      ["Model", d.model ? shown(d.model) : "–"],
      ["Status", String(d.status)],
      ["Latency (ms)", fmtInt(d.latency_ms)],
      ["Time to first token (ms)", fmtInt(d.time_to_first_token_ms)],
      ["User", d.user_id ? shown(d.user_id) : "–"],
      ["Session", d.session ? shown(`${d.session.id} ${d.session.path || ""}`) : "–"],
      ["Tokens (prompt / completion)", `${fmtInt(d.usage.prompt_tokens)} / ${fmtInt(d.usage.completion_tokens)}`],
      ["Cost", fmtUsd(d.cost_usd)],
    ];
    if (d.error) meta.push(["Error", shown(d.error)]);
    if (d.body_truncated) meta.push(["Bodies", "cut at the logged body limit (HELICONE_MAX_LOGGED_BODY_BYTES)"]);
    $("#detail-meta").replaceChildren(...meta.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
    detailRequestId = d.request_id;
    showProperties(d.properties);
    const scores = Object.entries(d.scores || {});
    $("#detail-scores").replaceChildren(
      ...(scores.length ? scores.map(([k, v]) => el("li", { class: "score", text: shown(`${k}: ${v}`) })) : [el("li", { text: "No scores" })]),
    );
    showBody($("#detail-request-body"), d.request_body, d.request_body_error, d.request_body_encoding);
    showBody($("#detail-response-body"), d.response_body, d.response_body_error, d.response_body_encoding);
    return false;
  });
  panel.scrollIntoView({ block: "start" });
}

// ---- forms: what the api refuses, next to the field it names ----------------------------------

// Each problem of a 422 shows next to its field (the form's [data-error-for] element named by the field's first
// part, its input marked aria-invalid); anything else (a 404, a 409, a field the form has no input for, a network
// error) in the form's own error line.
function showFormError(form, e) {
  clearFormErrors(form);
  const slots = new Map([...form.querySelectorAll("[data-error-for]")].map((s) => [s.dataset.errorFor, s]));
  const details = e instanceof ApiError ? e.details : [];
  let unplaced = details.length === 0;
  for (const d of details) {
    const slot = slots.get(String(d.field).split(".")[0]);
    if (!slot) {
      unplaced = true;
      continue;
    }
    slot.textContent = (slot.textContent ? slot.textContent + "; " : "") + shown(d.message); // it may repeat the value
    form.elements[slot.dataset.errorFor].setAttribute("aria-invalid", "true");
  }
  $(".form-error", form).textContent = unplaced ? "Error: " + shown(e.message) : "Not saved: see the field marked.";
}

function clearFormErrors(form) {
  for (const node of form.querySelectorAll(".field-error, .form-error, .form-status")) node.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

function resetForm(form) {
  form.reset();
  clearFormErrors(form);
}

// A problem found before anything is sent, shown as the api's would be.
const invalid = (field, message) => new ApiError(0, `${field}: ${message}`, [{ field, message }]);

// Bumped when the page drops what a key showed (clearPage): an answer to an earlier key's action renders nothing.
let pageEpoch = 0;

// Runs a form's action once at a time (its submit button disabled meanwhile: a double click creates one webhook);
// `act` returns what to do with the answer, run only if the page still shows what the form was for (`still()`).
async function submitForm(form, act, still = () => true) {
  const epoch = pageEpoch;
  const button = $("button[type=submit]", form);
  const live = () => epoch === pageEpoch && still();
  clearFormErrors(form);
  button.disabled = true;
  try {
    const done = await act();
    if (live()) done();
  } catch (e) {
    if (live()) showFormError(form, e);
  } finally {
    button.disabled = false;
  }
}

// ---- a request's custom properties ------------------------------------------------------------

let detailRequestId = null; // the request the detail shows (its properties' form writes to it)

function showProperties(props) {
  const entries = Object.entries(props || {}).sort(byKey);
  $("#detail-properties").replaceChildren(
    ...(entries.length
      ? entries.map(([k, v]) =>
        el("li", { class: "property" }, value(k), " = ", value(v),
          el("button", { type: "button", class: "link edit-property", "aria-label": "Edit property " + shown(k), text: "Edit", onclick: () => editProperty(k, v) })))
      : [el("li", { text: "No properties" })]),
  );
}

function editProperty(key, v) {
  const form = $("#property-form");
  clearFormErrors(form);
  form.elements.key.value = key;
  form.elements.value.value = v;
  form.elements.value.focus();
}

// PUT /v1/request/{id}/property: the detail then shows the request's properties as the answer has them.
function saveProperty(ev) {
  ev.preventDefault();
  const form = ev.target;
  const id = detailRequestId;
  const seq = panelLoads.detail; // another request opened meanwhile: its detail is not this answer's
  const body = { key: form.elements.key.value.trim(), value: form.elements.value.value };
  return submitForm(form, async () => {
    const r = await api("PUT", `/v1/request/${encodeURIComponent(id)}/property`, body);
    return () => {
      showProperties(r.properties);
      form.reset();
      $(".form-status", form).textContent = shown(`Saved ${r.key} = ${r.value}`);
    };
  }, () => panelLoads.detail === seq && detailRequestId === id);
}

// ---- webhooks ---------------------------------------------------------------------------------

const fmtRate = (n) => `${Number(n).toLocaleString("en-US", { maximumFractionDigits: 4 })}%`;

function webhookRow(w) {
  const filters = Object.entries(w.property_filters || {}).sort(byKey);
  const actions = el("span", { class: "webhook-actions" });
  const remove = el("button", { type: "button", class: "delete-webhook", "data-webhook-id": w.id, "aria-label": "Delete webhook to " + shown(w.destination), text: "Delete" });
  remove.addEventListener("click", () => confirmDelete(actions, remove, w));
  actions.append(remove);
  const tr = row([
    value(w.destination),
    fmtRate(w.sample_rate),
    filters.length ? el("ul", { class: "plain" }, ...filters.map(([k, v]) => el("li", {}, value(`${k}=${v}`)))) : "every request",
    w.include_data ? "yes" : "no",
    fmtTime(w.created_at),
    actions,
  ]);
  tr.dataset.webhookId = w.id;
  return tr;
}

// "Delete" asks first, in the row: nothing is deleted until "Yes, delete"; a refusal shows there.
function confirmDelete(box, remove, w) {
  const yes = el("button", { type: "button", class: "confirm-delete", text: "Yes, delete" });
  const no = el("button", { type: "button", class: "cancel-delete", text: "Cancel" });
  const said = el("span", { class: "form-error", role: "alert" });
  box.replaceChildren(el("span", { text: "Delete this webhook? Its deliveries stop. " }), yes, " ", no, said);
  no.addEventListener("click", () => {
    box.replaceChildren(remove);
    remove.focus();
  });
  yes.addEventListener("click", async () => {
    const epoch = pageEpoch;
    yes.disabled = no.disabled = true;
    said.textContent = "";
    try {
      await api("DELETE", "/v1/webhooks/" + encodeURIComponent(w.id));
      if (epoch === pageEpoch) loadPanel("webhooks", loadWebhooks, NO_WEBHOOKS);
    } catch (e) {
      if (epoch !== pageEpoch) return;
      said.textContent = "Not deleted: " + shown(e.message);
      yes.disabled = no.disabled = false;
    }
  });
  no.focus();
}

const NO_WEBHOOKS = "No webhooks yet: add one below.";

async function loadWebhooks(current) {
  const resp = await api("GET", "/v1/webhooks");
  stillCurrent(current);
  $("#webhooks-table tbody").replaceChildren(...resp.data.map(webhookRow));
  $("#webhooks-table").dataset.rows = String(resp.data.length);
  return resp.data.length === 0;
}

// The form as POST /v1/webhooks takes it; property filters are one name=value a line (a name cannot hold "=").
function webhookSpec(form) {
  const rate = form.elements.sample_rate;
  if (rate.validity.badInput || rate.value.trim() === "") throw invalid("sample_rate", "a percent from 0 to 100, e.g. 100");
  // no prototype: a property named constructor or __proto__ is a filter like any other
  const filters = Object.create(null);
  const seen = new Set(); // names match in any case (the api stores them lower-case)
  for (const [i, line] of form.elements.property_filters.value.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw invalid("property_filters", `line ${i + 1}: write name=value, e.g. environment=production`);
    const name = line.slice(0, at).trim();
    if (seen.has(name.toLowerCase())) throw invalid("property_filters", `line ${i + 1}: ${name} is given twice`);
    seen.add(name.toLowerCase());
    filters[name] = line.slice(at + 1).trim();
  }
  return { destination: form.elements.destination.value.trim(), sample_rate: Number(rate.value), property_filters: filters, include_data: form.elements.include_data.checked };
}

function createWebhook(ev) {
  ev.preventDefault();
  const form = ev.target;
  let spec;
  try {
    spec = webhookSpec(form);
  } catch (e) {
    showFormError(form, e);
    return;
  }
  return submitForm(form, async () => {
    const w = await api("POST", "/v1/webhooks", spec);
    return () => {
      showWebhookKey(w);
      resetForm(form);
      loadPanel("webhooks", loadWebhooks, NO_WEBHOOKS);
    };
  });
}

// The key that signs a webhook's deliveries is in its create answer only: shown here until dismissed (or the
// page drops the api key), kept nowhere else.
function showWebhookKey(w) {
  $("#webhook-key-destination").textContent = shown(w.destination);
  $("#webhook-key-value").textContent = w.hmac_key;
  $("#webhook-key").hidden = false;
  $("#webhook-key-done").focus();
}

function hideWebhookKey() {
  $("#webhook-key").hidden = true;
  $("#webhook-key-value").textContent = "";
  $("#webhook-key-destination").textContent = "";
}

// ---- sessions and users -----------------------------------------------------------------------

function sessionRow(s) {
  return row([
    el("button", { type: "button", class: "link", "aria-label": "Show session tree " + s.session_id, onclick: () => openSession(s.session_id) },
      value(s.session_name ? `${s.session_name} (${s.session_id})` : s.session_id)),
    fmtInt(s.requests),
    fmtUsd(s.cost_usd),
    fmtInt(s.total_tokens),
    fmtInt(s.duration_ms),
    fmtInt(s.errors),
    fmtTime(s.last_seen),
  ]);
}

function userRow(u) {
  return row([
    u.user_id
      ? el("button", { type: "button", class: "link", "aria-label": "Show requests of user " + u.user_id, onclick: () => filterByUser(u.user_id) }, value(u.user_id))
      : "(no user)",
    fmtInt(u.requests),
    fmtUsd(u.cost_usd),
    fmtInt(u.total_tokens),
    fmtInt(u.active_days),
    fmtTime(u.last_seen),
  ]);
}

const LISTS = {
  sessions: { path: "/v1/session/query", id: (s) => s.session_id, row: sessionRow },
  users: { path: "/v1/user/query", id: (u) => u.user_id, row: userRow },
};

// The api pages these lists by offset alone: each page asks for one row more than it shows (whether another page
// follows), every next one with the very same query (its range too). A row a later page repeats (its session or
// user moved up with newer requests since) is shown once. listMore[name]: the next page's query and the ids shown.
const listMore = {};

function setListMore(name, next) {
  listMore[name] = next;
  $(`#${name}-more`).hidden = !next;
  $(`#${name}-table`).dataset.rows = String($(`#${name}-table tbody`).rows.length);
}

async function loadListPage(name, current, query, shown) {
  const list = LISTS[name];
  const resp = await api("POST", list.path, { ...query, limit: LIST_LIMIT + 1 });
  stillCurrent(current);
  const page = resp.data.slice(0, LIST_LIMIT).filter((d) => !shown.has(list.id(d)));
  for (const d of page) shown.add(list.id(d));
  const body = $(`#${name}-table tbody`);
  if (query.offset === 0) body.replaceChildren(...page.map(list.row));
  else body.append(...page.map(list.row));
  setListMore(name, resp.data.length > LIST_LIMIT ? { query: { ...query, offset: query.offset + LIST_LIMIT }, shown } : null);
  return shown.size === 0;
}

// The panel load of a list's first page, and of its next one ("Load more").
const loadList = (name) => (current) => {
  setListMore(name, null); // a "load more" now would append to the list this load replaces
  const r = listRange();
  return loadListPage(name, current, { filter: { start: r.start, end: r.end }, offset: 0 }, new Set());
};
const loadMoreList = (name) => (current) => loadListPage(name, current, listMore[name].query, listMore[name].shown);

function treeItem(node) {
  const label = `${shown(node.name || node.path || "/")} — ${fmtUsd(node.cost_usd)}, ${fmtInt(node.duration_ms)} ms`;
  const group = el("ul", { role: "group" });
  for (const r of node.requests || []) {
    const text = `${shown(r.model || r.path)} · ${r.status} · ${fmtInt(r.latency_ms)} ms · ${fmtUsd(r.cost_usd)}`;
    const open = el("button", { type: "button", class: "link", "aria-label": "Open request " + r.request_id, text, onclick: () => openRequest(r.request_id) });
    group.append(el("li", { role: "treeitem", class: "tree-request" }, open));
  }
  for (const child of node.children || []) group.append(treeItem(child));
  return el("li", { role: "treeitem", "aria-expanded": "true", class: "tree-node" }, el("span", { text: label }), group);
}

function treeRequests(node) {
  return (node.requests || []).length + (node.children || []).reduce((n, c) => n + treeRequests(c), 0);
}

let sessionOpens = 0;
async function openSession(id) {
  const seq = ++sessionOpens;
  $("#session-tree-box").hidden = false;
  $("#session-tree-id").textContent = shown(id);
  const tree = $("#session-tree");
  tree.replaceChildren(el("li", { text: "Loading…" }));
  $("#session-tree-status").textContent = "";
  try {
    const s = await api("GET", "/v1/session/" + encodeURIComponent(id));
    if (seq !== sessionOpens) return;
    tree.replaceChildren(treeItem(s.tree));
    if (s.requests_truncated) {
      $("#session-tree-status").textContent =
        `Cut short: the tree shows the first ${fmtInt(treeRequests(s.tree))} of the session's ${fmtInt(s.requests)} requests.`;
    }
  } catch (e) {
    if (seq === sessionOpens) tree.replaceChildren(el("li", { text: e instanceof ApiError && e.status === 404 ? "Not available." : "Error: " + shown(e.message) }));
  }
}

function filterByUser(userId) {
  $("#request-filters").elements.user_id.value = userId;
  loadPanel("requests", loadRequests);
  $("#panel-requests").scrollIntoView({ block: "start" });
}

// ---- key and page wiring ----------------------------------------------------------------------

// What a key's org showed goes with the key: the next key entered (of any org) sees only its own data.
function clearPage() {
  for (const name of Object.keys(panelLoads)) panelLoads[name]++; // loads under way render nothing
  pageEpoch++; // and so do the forms' actions under way
  sessionOpens++;
  for (const id of Object.keys(charts)) {
    charts[id].destroy();
    delete charts[id];
  }
  for (const panel of document.querySelectorAll("#main .panel")) setPanel(panel.id.slice("panel-".length), "idle");
  for (const node of document.querySelectorAll("#main :is(tbody, dl, ul, pre), #detail-id, #session-tree-id, #session-tree-status")) node.replaceChildren();
  $("#panel-detail").hidden = true;
  $("#session-tree-box").hidden = true;
  detailRequestId = null;
  hideWebhookKey();
  for (const form of [$("#property-form"), $("#webhook-form")]) resetForm(form); // what was typed for that org too
  setRequestsMore(null, null);
  for (const name of Object.keys(LISTS)) setListMore(name, null);
}

function keyRefused(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  clearPage();
  $("#main").hidden = true;
  $("#forget-key").hidden = true;
  $("#key-status").textContent = "The api refused the key: " + shown(message);
}

function loadAll() {
  $("#main").hidden = false;
  $("#forget-key").hidden = false;
  $("#key-status").textContent = "Connected.";
  loadPanel("summary", loadSummary);
  loadPanel("timeseries", loadTimeseries);
  loadPanel("models", loadModels);
  loadPanel("requests", loadRequests);
  loadPanel("sessions", loadList("sessions"));
  loadPanel("users", loadList("users"));
  loadPanel("webhooks", loadWebhooks, NO_WEBHOOKS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#api-key");
    const key = input.value.trim();
    // fetch cannot send such a key in a header (it would throw in every panel): said here, nothing sent or kept
    if (!API_KEY_FORM.test(key)) {
      input.setAttribute("aria-invalid", "true");
      $("#key-status").textContent = "This key has characters an API key cannot have: a Helicone API key is sk-helicone- " +
        "followed by letters, digits, '-' and '_' (paste the whole key, not its preview ending in …).";
      return;
    }
    input.removeAttribute("aria-invalid");
    clearPage(); // a key entered while connected: nothing the previous key showed stays
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    loadAll();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    clearPage();
    $("#main").hidden = true;
    $("#forget-key").hidden = true;
    $("#key-status").textContent = "Key forgotten. Enter a Helicone API key to load the dashboard.";
  });
  $("#range").addEventListener("change", () => apiKey() && loadAll());
  $("#request-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadPanel("requests", loadRequests);
  });
  $("#property-form").addEventListener("submit", saveProperty);
  $("#webhook-form").addEventListener("submit", createWebhook);
  $("#webhook-key-done").addEventListener("click", hideWebhookKey);
  $("#requests-more").addEventListener("click", () => requestsMore && loadPanel("requests", loadMoreRequests));
  for (const name of Object.keys(LISTS)) $(`#${name}-more`).addEventListener("click", () => listMore[name] && loadPanel(name, loadMoreList(name)));
  $("#request-filters").addEventListener("reset", () => setTimeout(() => loadPanel("requests", loadRequests), 0));
  if (apiKey()) loadAll();
});
