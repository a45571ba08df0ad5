// vibekit telemetry dashboard: a small single-page application without dependencies.
//
// Every value that comes from the server reaches the page as text (textContent,
// or attributes set with setAttribute on elements this file creates); no HTML
// string is ever built from data, so a prompt holding <script> is shown as text.
// The Content-Security-Policy of the API server allows scripts and styles from
// this origin only, which is all this file needs.
"use strict";

const KEY_STORE = "vibekit.apiKey";
const THEME_STORE = "vibekit.theme";
const WINDOW = "24h";
const PAGE_SIZE = 50;
const FEED_SIZE = 25;

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  analytics: false,
  alerts: false,
  metrics: null,
  source: null,
  handlers: new Set(),
  unseenAnomalies: 0,
};

// ---------------------------------------------------------------- DOM helpers

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Replace an element's content (null and false children are left out, as in h()).
function fill(el, ...children) {
  clear(el).append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// ---------------------------------------------------------------- formatting


function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 10000) return `${num(value / 1000, 1)} s`;
  return `${num(value, value < 10 ? 1 : 0)} ms`;
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${num(value, 2)}%`;
}

function dollars(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1 ? `$${num(value, 2)}` : `$${num(value, 4)}`;
}

function when(epochMs) {
  if (!epochMs) return "–";
  const d = new Date(epochMs);
  const today = new Date();
  const time = d.toLocaleTimeString("en-GB", { hour12: false });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString("en-CA")} ${time}`;
}

function ago(epochMs) {
  const seconds = Math.max(0, Math.round((Date.now() - epochMs) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

function clip(text, length) {
  if (!text) return "";
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

function sessionLink(id, text) {
  return h("a", { href: `#/session/${encodeURIComponent(id)}` }, text || clip(id, 12));
}

// ---------------------------------------------------------------- the API

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let keyPrompt = null;

function askForKey(refused) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  error.hidden = !refused;
  error.textContent = refused ? "The server refused that key; check it and try again." : "";
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      state.key = input.value.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      document.getElementById("forget-key").hidden = false;
      dialog.close();
      keyPrompt = null;
      resolve();
    }, { once: true });
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return keyPrompt;
}

async function api(path, params, attempt = 0) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 401 && attempt < 5) {
    await askForKey(Boolean(state.key));
    connectLive();
    return api(path, params, attempt + 1);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (response.status === 429) {
    const retry = response.headers.get("retry-after") || "a few";
    showBanner(`The server's rate limit was reached; try again in ${retry} seconds ` +
      "(raise [api.rate_limit] max or run telemetry api --no-rate-limit for local use).");
  }
  if (!response.ok) {
    const detail = body && body.details ? body.details.map((d) => `${d.field}: ${d.message}`).join("; ") : "";
    throw new HttpError(response.status, (body && (detail || body.message)) || `HTTP ${response.status}`);
  }
  hideBanner();
  return body;
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  document.getElementById("banner").hidden = true;
}

// ---------------------------------------------------------------- live updates

function on(kind, handler) {
  const entry = { kind, handler };
  state.handlers.add(entry);
  return () => state.handlers.delete(entry);
}

function emit(kind, payload) {
  for (const entry of [...state.handlers]) {
    if (entry.kind === kind) entry.handler(payload);
  }
}

function setLive(status, title) {
  const el = document.getElementById("live");
  el.dataset.state = status;
  el.textContent = status;
  if (title) el.title = title;
}

function connectLive() {
  if (state.source) state.source.close();
  const url = new URL("/api/stream", location.origin);
  if (state.analytics) url.searchParams.set("metrics", WINDOW);
  if (state.key) url.searchParams.set("api_key", state.key);
  const source = new EventSource(url);
  state.source = source;
  source.addEventListener("open", () => setLive("live", "Receiving live updates"));
  source.addEventListener("metrics", (message) => {
    state.metrics = JSON.parse(message.data);
    emit("metrics", state.metrics);
  });
  source.addEventListener("anomaly", (message) => {
    const anomaly = JSON.parse(message.data);
    if (document.body.dataset.page !== "anomalies") showUnseenAnomalies(state.unseenAnomalies + 1);
    emit("anomaly", anomaly);
  });
  for (const type of ["start", "stream", "end", "error", "custom"]) {
    source.addEventListener(type, (message) => emit("event", JSON.parse(message.data)));
  }
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("offline", "The live stream was refused or closed; retrying");
      // the stream's refusal carries no status: ask the API once (that prompts for a key if needed), then retry
      setTimeout(() => {
        if (state.source !== source) return;
        api("/api/sessions", { limit: 1 }).catch(() => null).finally(() => {
          if (state.source === source) connectLive();
        });
      }, 3000);
    } else {
      setLive("offline", "Reconnecting");
    }
  });
}

// the number on the Anomalies link: anomalies found live since that page was last open
function showUnseenAnomalies(count) {
  state.unseenAnomalies = count;
  const el = document.getElementById("anomaly-count");
  el.textContent = count > 99 ? "99+" : String(count);
  el.hidden = count === 0;
  el.title = `${count} new ${count === 1 ? "anomaly" : "anomalies"} found live`;
}

// ---------------------------------------------------------------- charts (plain SVG)

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function hhmm(epochMs) {
  return new Date(epochMs).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });
}

function frame(width, height, top, label) {
  return s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
    preserveAspectRatio: "none" },
    s("line", { class: "axis", x1: 34, x2: width - 4, y1: height - 18, y2: height - 18 }),
    s("text", { x: 30, y: 12, "text-anchor": "end" }, num(top, top < 10 ? 2 : 0)),
    s("text", { x: 30, y: height - 18, "text-anchor": "end" }, "0"));
}

function barChart(points, label) {
  const width = 640;
  const height = 170;
  const top = niceMax(Math.max(0, ...points.map((p) => p[1])));
  const svg = frame(width, height, top, label);
  if (!points.length) return svg;
  const plot = width - 40;
  const slot = plot / points.length;
  points.forEach(([t, value], index) => {
    const barHeight = ((height - 30) * value) / top;
    svg.append(s("rect", { class: "bar", x: 36 + index * slot, y: height - 18 - barHeight,
      width: Math.max(1, slot - 1.5), height: barHeight },
    s("title", {}, `${hhmm(t)}: ${num(value)} events`)));
  });
  svg.append(s("text", { x: 36, y: height - 4 }, hhmm(points[0][0])));
  svg.append(s("text", { x: width - 4, y: height - 4, "text-anchor": "end" }, hhmm(points[points.length - 1][0])));
  return svg;
}

function lineChart(points, { mark, band, label }) {
  const width = 640;
  const height = 150;
  const values = points.map((p) => p[1]);
  if (band) values.push(band[0], band[1]);
  const top = niceMax(Math.max(0, ...values.filter((v) => v !== null && Number.isFinite(v))));
  const svg = frame(width, height, top, label);
  if (!points.length) return svg;
  const t0 = points[0][0];
  const t1 = Math.max(points[points.length - 1][0], t0 + 1);
  const x = (t) => 36 + ((width - 40) * (t - t0)) / (t1 - t0);
  const y = (v) => height - 18 - ((height - 30) * Math.max(0, v)) / top;
  if (band && Number.isFinite(band[0]) && Number.isFinite(band[1])) {
    svg.append(s("rect", { class: "band", x: 36, width: width - 40, y: y(band[1]),
      height: Math.max(1, y(band[0]) - y(band[1])) }));
  }
  svg.append(s("polyline", { class: "line", points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
  if (mark) {
    svg.append(s("circle", { class: "mark", cx: x(mark[0]), cy: y(mark[1]), r: 4.5 },
      s("title", {}, `${hhmm(mark[0])}: ${num(mark[1], 2)}`)));
  }
  svg.append(s("text", { x: 36, y: height - 4 }, hhmm(t0)));
  svg.append(s("text", { x: width - 4, y: height - 4, "text-anchor": "end" }, hhmm(t1)));
  return svg;
}

// ---------------------------------------------------------------- pages

function card(label, metric, value, text, sub) {
  return h("div", { class: "card", dataset: { metric, value: value === null || value === undefined ? "" : String(value) } },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, text),
    sub ? h("div", { class: "sub" }, sub) : null);
}

function metricCards(m) {
  const p = m.performance;
  return [
    card("Events (24 h)", "events.total", m.events.total, num(m.events.total), `${num(m.events.per_minute, 1)} per minute`),
    card("Active sessions", "sessions.active", m.sessions.active, num(m.sessions.active),
      `${num(m.sessions.started)} started, ${num(m.sessions.ended)} ended`),
    card("Error rate", "errors.rate", m.errors.rate, pct(m.errors.rate),
      `${num(m.errors.total)} errors, ${pct(m.errors.session_failure_rate)} of sessions failed`),
    card("Latency p50", "performance.p50_latency", p.p50_latency, ms(p.p50_latency), `average ${ms(p.avg_latency)}`),
    card("Latency p95", "performance.p95_latency", p.p95_latency, ms(p.p95_latency), `max ${ms(p.max_latency)}`),
    card("Latency p99", "performance.p99_latency", p.p99_latency, ms(p.p99_latency), "session start to end"),
    card("Time to first chunk", "performance.p50_ttft", p.p50_ttft, ms(p.p50_ttft), `p95 ${ms(p.p95_ttft)}`),
    card("Tokens", "tokens.total", m.tokens.total, num(m.tokens.total),
      `${num(m.tokens.input)} in, ${num(m.tokens.output)} out`),
    card("Estimated cost", "tokens.cost", m.tokens.cost, dollars(m.tokens.cost), "from the price table"),
  ];
}

function modelTable(m) {
  const rows = Object.entries(m.by_model || {}).sort((a, b) => b[1].tokens.total - a[1].tokens.total);
  if (!rows.length) return h("p", { class: "empty" }, "No model usage in this window.");
  return h("div", { class: "scroll" }, h("table", { id: "models" },
    h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Sessions"),
      h("th", { class: "num wide-only" }, "Events"), h("th", { class: "num wide-only" }, "p95 latency"),
      h("th", { class: "num" }, "Tokens"), h("th", { class: "num" }, "Est. cost"))),
    h("tbody", {}, rows.map(([model, b]) => h("tr", { dataset: { model, tokens: b.tokens.total, cost: b.tokens.cost ?? "" } },
      h("td", {}, model), h("td", { class: "num" }, num(b.sessions.started)),
      h("td", { class: "num wide-only" }, num(b.events)), h("td", { class: "num wide-only" }, ms(b.performance.p95_latency)),
      h("td", { class: "num" }, num(b.tokens.total)), h("td", { class: "num" }, dollars(b.tokens.cost)))))));
}

function eventSummary(e) {
  if (e.event_type === "error") return `${e.error_type || "error"}: ${e.error_message || ""}`;
  if (e.event_type === "stream") return e.stream_data || "";
  if (e.event_type === "start") return e.prompt || e.action || "";
  if (e.event_type === "end") return e.status || "";
  return [e.action, e.label, e.value].filter((v) => v !== null && v !== undefined && v !== "").join(" · ");
}

function feedItem(e) {
  return h("li", { class: "fresh", dataset: { id: e.id, type: e.event_type } },
    h("span", { class: "muted mono" }, when(e.timestamp)),
    badge(e.event_type),
    h("span", { class: "wide-only" }, e.category),
    h("span", { class: "text" }, clip(eventSummary(e), 160)),
    e.session_id ? sessionLink(e.session_id) : null);
}

function overviewPage(view) {
  const cards = h("div", { class: "grid", id: "cards" });
  const chart = h("div", { id: "events-chart" });
  const models = h("div", { id: "models-panel" });
  const anomalies = h("div", { id: "recent-anomalies" }, h("p", { class: "empty" }, "Looking for anomalies…"));
  const feed = h("ul", { class: "feed", id: "feed" });
  const updated = h("span", { class: "muted", id: "updated" });
  view.append(
    h("div", { class: "filters" }, h("h1", {}, "Overview"), h("span", { class: "spacer" }), updated),
    cards,
    h("div", { class: "two" },
      h("section", { class: "panel" }, h("h2", {}, "Events per minute (last hour)"), chart),
      h("section", { class: "panel" }, h("h2", {}, "Live events"), feed,
        h("p", { class: "empty", id: "feed-empty" }, "Waiting for events…"))),
    h("div", { class: "two" },
      h("section", { class: "panel" }, h("h2", {}, "Tokens and estimated cost per model (24 h)"), models),
      h("section", { class: "panel" }, h("h2", {}, "Recent anomalies (6 h)"), anomalies)));

  const render = (payload) => {
    const m = payload.metrics;
    clear(cards).append(...metricCards(m));
    clear(chart).append(barChart(payload.events_per_minute || [], "Events per minute over the last hour"));
    clear(models).append(modelTable(m));
    updated.textContent = `updated ${when(Date.now())}`;
    view.dataset.ready = "true";
  };
  const stops = [];
  if (!state.analytics) {
    cards.append(h("p", { class: "muted" }, "Install the analytics plugin (vibekit-telemetry-analytics) for metrics, charts and anomalies."));
    view.dataset.ready = "true";
    clear(anomalies).append(h("p", { class: "empty" }, "Needs the analytics plugin."));
  } else {
    if (state.metrics) render(state.metrics);
    stops.push(on("metrics", render));
    stops.push(recentAnomalies(anomalies));
  }
  const shown = new Set();
  const add = (e, fresh) => {
    if (shown.has(e.id)) return;
    shown.add(e.id);
    document.getElementById("feed-empty")?.remove();
    const item = feedItem(e);
    if (!fresh) item.classList.remove("fresh");
    if (fresh) feed.prepend(item);
    else feed.append(item);
    while (feed.children.length > FEED_SIZE) feed.lastChild.remove();
  };
  stops.push(on("event", (e) => add(e, true)));
  // the latest events so far, newest first, under whatever arrives live meanwhile
  api("/api/events", { limit: FEED_SIZE, order: "desc" })
    .then((page) => page.events.forEach((e) => add(e, false)))
    .catch(() => null);
  return () => stops.forEach((stop) => stop());
}

// the last 6 hours' anomalies, newest first, and those the live detectors find while the page is open
function recentAnomalies(target) {
  const SHOWN = 6;
  let items = [];
  const key = (a) => `${a.metric}@${a.timestamp}`;
  const render = (fresh) => {
    clear(target).append(items.length
      ? h("ul", { class: "feed" }, items.slice(0, SHOWN).map((a) => h("li", { class: fresh.has(key(a)) ? "fresh" : null,
        dataset: { metric: a.metric, timestamp: a.timestamp } },
      h("span", { class: "muted mono" }, when(a.timestamp)), badge(a.severity || "medium"), h("span", {}, a.metric),
      h("span", { class: "text" }, a.description || `${a.metric} = ${num(a.value, 3)}`))))
      : h("p", { class: "empty" }, "No anomalies in the last 6 hours."),
    h("p", {}, h("a", { href: "#/anomalies" }, "All anomalies →")));
  };
  const add = (list, fresh) => {
    const known = new Set(items.map(key));
    items = items.concat(list.filter((a) => !known.has(key(a)))).sort((a, b) => b.timestamp - a.timestamp);
    render(fresh ? new Set(list.map(key)) : new Set());
  };
  const stop = on("anomaly", (a) => add([a], true));
  api("/api/anomalies", { since: "6h" })
    .then((result) => add(result.anomalies, false))
    .catch((err) => { clear(target).append(h("p", { class: "error" }, `Could not load anomalies: ${err.message}`)); });
  return stop;
}

// -- sessions

const SESSION_COLUMNS = [
  { key: "started_at", label: "Started", render: (x) => when(x.started_at) },
  { key: "agent", label: "Agent", render: (x) => x.agent || "–" },
  { key: null, label: "Mode", render: (x) => x.mode || "–", wide: true },
  { key: "status", label: "Status", render: (x) => badge(x.status) },
  { key: null, label: "Prompt", render: (x) => h("span", { class: "prompt-cell", title: x.prompt || "" }, clip(x.prompt, 120)) },
  { key: "duration_ms", label: "Duration", render: (x) => ms(x.duration_ms), num: true },
  { key: "ttft_ms", label: "TTFT", render: (x) => ms(x.ttft_ms), num: true, wide: true },
  { key: "event_count", label: "Events", render: (x) => num(x.event_count), num: true, wide: true },
  { key: "error_count", label: "Errors", render: (x) => num(x.error_count), num: true },
  { key: "tokens", label: "Tokens", render: (x) => num(x.tokens.total), num: true },
];

function routeParams() {
  const hash = location.hash.replace(/^#/, "");
  const [path, query] = hash.split("?");
  return { path: path || "/", params: new URLSearchParams(query || "") };
}

function setParams(path, params) {
  const query = new URLSearchParams([...params].filter(([, v]) => v !== "" && v !== null));
  const text = query.toString();
  location.hash = `#${path}${text ? `?${text}` : ""}`;
}

const STARTED_PRESETS = [["", "all time"], ["1h", "last hour"], ["24h", "last 24 hours"], ["7d", "last 7 days"],
  ["30d", "last 30 days"], ["custom", "custom range…"]];

// a datetime-local input's value (local time, to the minute) for an epoch-ms time, and back
function localInputValue(epochMs) {
  const d = new Date(epochMs);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  const t = value ? new Date(value).getTime() : NaN;
  return Number.isFinite(t) ? String(t) : "";
}

// "Started": a preset window, or a custom from/to range (since/until in epoch ms in the URL)
function startedFilter(params, update) {
  const since = params.get("since") || "";
  const until = params.get("until") || "";
  const epoch = (value) => /^\d+$/.test(value);  // a preset is a span such as 24h; a custom bound is epoch ms
  const custom = epoch(since) || epoch(until);
  const from = h("input", { type: "datetime-local", name: "from", "aria-label": "Started from",
    value: epoch(since) ? localInputValue(Number(since)) : "" });
  const to = h("input", { type: "datetime-local", name: "to", "aria-label": "Started before",
    value: epoch(until) ? localInputValue(Number(until)) : "" });
  const range = h("span", { class: "range", hidden: !custom }, h("label", {}, "From", from), h("label", {}, "To", to));
  const apply = () => {
    if (from.value || to.value) update({ since: fromLocalInput(from.value), until: fromLocalInput(to.value) });
  };
  from.addEventListener("change", apply);
  to.addEventListener("change", apply);
  const choice = h("select", { name: "since", "aria-label": "Started", onchange: () => {
    if (choice.value !== "custom") {
      update({ since: choice.value, until: "" });
      return;
    }
    // start from the last 24 hours as fixed times; the page comes back with both inputs to adjust
    if (!from.value) from.value = localInputValue(Date.now() - 86_400_000);
    apply();
  } }, STARTED_PRESETS.map(([value, text]) => h("option", { value, selected: custom ? value === "custom" : value === since }, text)));
  return h("span", { class: "started" }, h("label", {}, "Started", choice), range);
}

function sessionsPage(view, params) {
  const sort = params.get("sort") || "started_at";
  const order = params.get("order") || "desc";
  const page = Math.max(0, Number.parseInt(params.get("page") || "0", 10) || 0);
  const update = (changes, keepPage = false) => {
    const next = new URLSearchParams(params);
    for (const [name, value] of Object.entries(changes)) next.set(name, value);
    if (!keepPage) next.delete("page");
    setParams("/sessions", next);
  };
  const agents = Object.keys(state.metrics?.metrics?.by_category || {}).sort();
  const text = h("input", { type: "search", name: "text", placeholder: "Search prompts", value: params.get("text") || "",
    "aria-label": "Search prompts" });
  let typing = null;
  text.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => update({ text: text.value.trim() }), 350);
  });
  const select = (name, options, label) => {
    const el = h("select", { name, "aria-label": label, onchange: () => update({ [name]: el.value }) },
      options.map(([value, text_]) => h("option", { value, selected: (params.get(name) || "") === value }, text_)));
    return h("label", {}, label, el);
  };
  const agentInput = h("input", { name: "agent", list: "agent-list", value: params.get("agent") || "", placeholder: "any",
    size: 12, onchange: () => update({ agent: agentInput.value.trim() }) });
  const body = h("tbody", {});
  const info = h("span", { class: "muted", id: "page-info" }, "Loading…");
  const newer = h("div", { class: "notice", hidden: true },
    h("button", { type: "button", class: "quiet", onclick: () => { newer.hidden = true; load(); } }, "New sessions: refresh"));
  const buttons = {};
  const pager = h("div", { class: "pager" }, info,
    ...[["first", "« First"], ["prev", "‹ Prev"], ["next", "Next ›"], ["last", "Last »"]].map(([name, label]) => {
      buttons[name] = h("button", { type: "button", class: "quiet", disabled: true, dataset: { page: name } }, label);
      return buttons[name];
    }));
  const head = h("tr", {}, SESSION_COLUMNS.map((column) => {
    const sorted = column.key === sort;
    const th = h("th", { class: [column.num ? "num" : "", column.wide ? "wide-only" : ""].join(" ").trim() || null,
      "aria-sort": sorted ? (order === "asc" ? "ascending" : "descending") : null });
    if (!column.key) th.append(column.label);
    else {
      th.append(h("button", { type: "button", class: "sort", dataset: { sort: column.key },
        onclick: () => update({ sort: column.key, order: sorted && order === "desc" ? "asc" : "desc" }) }, column.label));
    }
    return th;
  }));
  view.append(
    h("h1", {}, "Sessions"),
    h("div", { class: "filters" },
      h("label", {}, "Search", text),
      h("label", {}, "Agent", agentInput, h("datalist", { id: "agent-list" }, agents.map((a) => h("option", { value: a })))),
      select("status", [["", "any"], ["active", "active"], ["completed", "completed"], ["failed", "failed"],
        ["cancelled", "cancelled"], ["timeout", "timeout"]], "Status"),
      startedFilter(params, update),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "root_only", checked: params.get("root_only") === "true",
        onchange: (event) => update({ root_only: event.target.checked ? "true" : "" }) }), "Top-level only")),
    newer,
    h("section", { class: "panel" }, h("div", { class: "scroll" }, h("table", { id: "sessions" }, h("thead", {}, head), body)), pager));

  let total = 0;
  async function load() {
    const query = { limit: PAGE_SIZE, offset: page * PAGE_SIZE, count: "true", sort, order };
    for (const name of ["agent", "status", "since", "until", "text", "root_only"]) query[name] = params.get(name);
    view.dataset.ready = "false";
    try {
      const result = await api("/api/sessions", query);
      total = result.total;
      clear(body);
      if (!result.sessions.length) {
        body.append(h("tr", {}, h("td", { colspan: SESSION_COLUMNS.length, class: "empty" }, "No sessions match.")));
      }
      for (const x of result.sessions) {
        const row = h("tr", { class: "link", dataset: { id: x.id }, onclick: (event) => {
          if (event.target.closest("a")) return;
          location.hash = `#/session/${encodeURIComponent(x.id)}`;
        } });
        SESSION_COLUMNS.forEach((column, index) => {
          const cell = h("td", { class: [column.num ? "num" : "", column.wide ? "wide-only" : ""].join(" ").trim() || null });
          const content = column.render(x);
          cell.append(index === 0 ? sessionLink(x.id, content) : content);
          row.append(cell);
        });
        body.append(row);
      }
      const from = total ? page * PAGE_SIZE + 1 : 0;
      info.textContent = `${num(from)}–${num(page * PAGE_SIZE + result.sessions.length)} of ${num(total)}`;
      info.dataset.total = total;
      const last = Math.max(0, Math.ceil(total / PAGE_SIZE) - 1);
      const target = { first: 0, prev: page - 1, next: page + 1, last };
      for (const [name, button] of Object.entries(buttons)) {
        button.disabled = target[name] < 0 || target[name] > last || target[name] === page;
        button.onclick = () => update({ page: String(target[name]) }, true);
      }
    } catch (err) {
      clear(body).append(h("tr", {}, h("td", { colspan: SESSION_COLUMNS.length, class: "error" }, err.message)));
      info.textContent = "";
    }
    view.dataset.ready = "true";
  }
  load();
  return on("event", (e) => {
    if (e.event_type === "start" && page === 0) newer.hidden = false;
  });
}

// -- one session

function relative(start, t) {
  const d = t - start;
  return d >= 0 ? `+${ms(d)}` : `−${ms(-d)}`;
}

function sessionPage(view, id) {
  const root = h("div", {}, h("p", { class: "empty" }, "Loading session…"));
  view.append(root);
  let session = null;
  let timeline = null;
  let response = null;
  const seen = new Set();

  const timelineRow = (e) => h("tr", { dataset: { id: e.id, type: e.event_type } },
    h("td", { class: "when mono" }, relative(session.started_at ?? e.timestamp, e.timestamp)),
    h("td", {}, badge(e.event_type)),
    h("td", { class: "wide-only muted" }, e.category),
    h("td", {}, clip(eventSummary(e), 300)));

  async function load() {
    try {
      session = await api(`/api/sessions/${encodeURIComponent(id)}`, { with_events: "true", tree: "true" });
    } catch (err) {
      clear(root).append(h("p", { class: "error" }, err.status === 404 ? `No session ${id}.` : err.message));
      view.dataset.ready = "true";
      return;
    }
    const events = session.events || [];
    events.forEach((e) => seen.add(e.id));
    const errors = events.filter((e) => e.event_type === "error");
    const streamed = events.filter((e) => e.event_type === "stream").map((e) => e.stream_data || "").join("");
    const redactions = Object.entries(session.metadata?.pii_redactions || {});
    const model = session.metadata?.model;
    timeline = h("tbody", {}, events.map(timelineRow));
    response = h("pre", { id: "response" }, streamed);
    const inTree = Boolean(session.parent_id || session.children?.length);
    fill(root,
      h("p", { class: "crumbs" }, h("a", { href: "#/sessions" }, "← Sessions"),
        inTree ? traceLink(session.id, "Trace view: the whole tree as a waterfall →", { id: "trace-link" }) : null),
      h("section", { class: "panel" },
        h("h1", {}, `${session.agent || "session"}${session.mode ? ` · ${session.mode}` : ""} `, badge(session.status)),
        h("div", { class: "muted mono" }, session.id),
        h("dl", { class: "facts" },
          fact("Started", when(session.started_at)), fact("Ended", when(session.ended_at)),
          fact("Duration", ms(session.duration_ms)), fact("Time to first chunk", ms(session.ttft_ms)),
          fact("Events", num(session.event_count)), fact("Chunks", num(session.stream_count)),
          fact("Errors", num(session.error_count)),
          fact("Tokens", `${num(session.tokens.input)} in / ${num(session.tokens.output)} out`),
          model ? fact("Model", model) : null,
          session.parent_id ? fact("Parent", sessionLink(session.parent_id)) : null)),
      h("section", { class: "panel" }, h("h2", {}, "Prompt"), h("pre", { id: "prompt" }, session.prompt ?? "(no prompt)")),
      h("section", { class: "panel" }, h("h2", {}, "Response (streamed chunks, reassembled)"), response),
      errors.length ? h("section", { class: "panel", id: "errors" }, h("h2", {}, `Errors (${errors.length})`),
        errors.map((e) => h("div", { class: "error-item" },
          h("p", {}, h("strong", { class: "error" }, e.error_type || "error"), " ", e.error_message || "",
            h("span", { class: "muted" }, ` at ${relative(session.started_at, e.timestamp)}`)),
          e.error_stack ? h("pre", {}, e.error_stack) : null))) : null,
      h("section", { class: "panel" }, h("h2", {}, `Timeline (${events.length} events${session.events_truncated ? ", first ones" : ""})`),
        h("div", { class: "scroll" }, h("table", { class: "timeline", id: "timeline" }, timeline))),
      session.children?.length ? h("section", { class: "panel" }, h("h2", {}, "Child sessions"),
        h("ul", {}, session.children.map((c) => h("li", {}, sessionLink(c.id, `${c.agent || "session"} · ${c.mode || ""}`), " ",
          badge(c.status), h("span", { class: "muted" }, ` ${ms(c.duration_ms)}`))))) : null,
      h("section", { class: "panel", id: "redactions" }, h("h2", {}, "PII redactions"),
        redactions.length
          ? h("table", {}, h("tbody", {}, redactions.map(([kind, count]) => h("tr", { dataset: { kind } },
            h("td", {}, kind), h("td", { class: "num" }, num(count))))))
          : h("p", { class: "muted" }, "Nothing was redacted in this session (or the pii plugin is not installed).")),
      h("section", { class: "panel" }, h("h2", {}, "Metadata"),
        h("pre", { id: "metadata" }, JSON.stringify(session.metadata || {}, null, 2))));
    view.dataset.ready = "true";
  }

  load();
  return on("event", (e) => {
    if (!session || e.session_id !== session.id || seen.has(e.id)) return;
    seen.add(e.id);
    timeline.append(timelineRow(e));
    if (e.event_type === "stream") response.append(e.stream_data || "");
  });
}

function fact(label, value) {
  return [h("div", {}, h("dt", {}, label), h("dd", {}, value))];
}

// -- a trace: a session and its descendants as a waterfall on one time axis, and the selected span's conversation

const FAILED_STATUSES = new Set(["failed", "error", "timeout"]);
// custom events of the GenAI mapping that carry a call's messages and tool calls (OTLP logs, a second span of a call)
const GENAI_DETAILS = new Set(["gen_ai.client.inference.operation.details", "otel.duplicate_span"]);
const MAX_TREE_DEPTH = 32;
const ROLE_LABELS = { system: "System", user: "User", assistant: "Assistant", tool: "Tool result",
  tool_call: "Tool call", error: "Error", input: "Input", output: "Output" };

function traceLink(id, text, props) {
  return h("a", { href: `#/trace/${encodeURIComponent(id)}`, ...props }, text);
}

// a word of data as a class name (kind-llm): never more than letters, digits, dashes
function cssWord(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9_-]+/g, "-").slice(0, 40);
}

function kindBadge(kind) {
  return kind ? h("span", { class: `badge kind kind-${cssWord(kind)}` }, kind) : null;
}

function spanName(x) {
  const name = x.agent || "session";
  return x.mode && x.mode !== x.kind ? `${name} · ${x.mode}` : name;
}

// the dollars of one call are often fractions of a cent
function cost(value) {
  if (value === null || value === undefined) return "–";
  if (value > 0 && value < 0.01) return `$${num(value, 6)}`;
  return dollars(value);
}

function isLlm(x) {
  return x.kind === "llm" || (!x.kind && Boolean(x.model));
}

function spanEnd(x) {
  return x.ended_at ?? x.last_event_at ?? x.started_at;
}

// the rows of the waterfall: depth first, each span's children in the order they started
function flattenTree(node, depth = 0, out = []) {
  out.push({ span: node, depth });
  if (depth < MAX_TREE_DEPTH) {
    const children = [...(node.children || [])].sort((a, b) => (a.started_at ?? 0) - (b.started_at ?? 0));
    for (const child of children) flattenTree(child, depth + 1, out);
  }
  return out;
}

// what a message's content says, as text: strings as they are, parts joined, anything else as JSON
function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map(contentText).filter((t) => t !== "").join("\n");
  if (typeof content === "object") {
    if (typeof content.text === "string") return content.text;
    if (content.content !== undefined) return contentText(content.content);
    return JSON.stringify(content, null, 2);
  }
  return String(content);
}

// tool calls as {id, name, arguments}, from our shape or OpenAI's ({function: {name, arguments}})
function toolCallsOf(value) {
  if (!Array.isArray(value)) return [];
  return value.filter((c) => c && typeof c === "object").map((c) => ({
    id: c.id ?? c.tool_call_id ?? null,
    name: c.name ?? c.function?.name ?? "tool",
    arguments: c.arguments ?? c.function?.arguments ?? c.input ?? null,
  }));
}

function argumentsText(args) {
  if (args === null || args === undefined || args === "") return "";
  if (typeof args === "string") {
    try {
      return JSON.stringify(JSON.parse(args), null, 2);
    } catch (err) {
      return args;
    }
  }
  return JSON.stringify(args, null, 2);
}

// A span's conversation from its events: the start event's system prompt and messages (and those the GenAI
// mapping's custom events carry), the answer (the streamed chunks, else the end event's text), the tool calls
// the answer asked for, and the errors.  Each item becomes a bubble.
function conversationOf(session, events) {
  const start = events.find((e) => e.event_type === "start");
  const end = events.filter((e) => e.event_type === "end").pop();
  const details = events.filter((e) => e.event_type === "custom" &&
    (GENAI_DETAILS.has(e.action) || String(e.action || "").startsWith("gen_ai.")));
  const sources = [[start?.metadata || {}, "start"], ...details.map((e) => [e.metadata || {}, e.action])];
  const items = [];
  const seen = new Set();
  const toolNames = new Map();
  let system = null;
  const messages = [];
  for (const [meta, source] of sources) {
    if (system === null && meta.system_prompt !== undefined && meta.system_prompt !== null) {
      system = { text: contentText(meta.system_prompt), source };
    }
    for (const m of Array.isArray(meta.messages) ? meta.messages : []) {
      if (!m || typeof m !== "object") continue;
      // the same message told twice (the span and a log record of one call) is shown once
      const key = JSON.stringify([m.role, contentText(m.content), m.tool_call_id ?? null,
        toolCallsOf(m.tool_calls).map((c) => [c.id, c.name])]);
      if (seen.has(key)) continue;
      seen.add(key);
      messages.push([m, source]);
    }
  }
  if (system && system.text && !messages.some(([m]) => m.role === "system" && contentText(m.content) === system.text)) {
    items.push({ role: "system", text: system.text, source: system.source });
  }
  const pending = [];  // calls not answered yet: a tool result without a call id answers the first of them
  const callItems = (calls, source) => calls.map((c) => {
    if (c.id) toolNames.set(c.id, c.name);
    pending.push(c);
    return { role: "tool_call", name: c.name, id: c.id, args: argumentsText(c.arguments), source };
  });
  for (const [m, source] of messages) {
    const role = typeof m.role === "string" && m.role ? m.role : "user";
    const text = contentText(m.content);
    const calls = toolCallsOf(m.tool_calls);
    if (role === "tool") {
      const id = m.tool_call_id ?? null;
      const answered = id ? pending.findIndex((c) => c.id === id) : (pending.length ? 0 : -1);
      const call = answered >= 0 ? pending.splice(answered, 1)[0] : null;
      items.push({ role, text, id, name: m.name || (id && toolNames.get(id)) || call?.name || null, source });
      continue;
    }
    if (text || !calls.length) items.push({ role, text, source });
    items.push(...callItems(calls, source));
  }
  const llm = isLlm(session);
  if (!messages.length && session.prompt) items.push({ role: llm ? "user" : "input", text: session.prompt, source: "prompt" });
  const streamed = events.filter((e) => e.event_type === "stream").map((e) => e.stream_data || "").join("");
  const answer = streamed || end?.stream_data || details.map((e) => e.stream_data).find((t) => t) || "";
  let calls = toolCallsOf(end?.metadata?.tool_calls);
  let callSource = "end";
  for (const e of details) {
    if (calls.length) break;
    calls = toolCallsOf(e.metadata?.tool_calls);
    callSource = e.action;
  }
  if (answer) items.push({ role: llm ? "assistant" : "output", text: answer, source: streamed ? "stream" : "end" });
  items.push(...callItems(calls, callSource));
  for (const e of events.filter((x) => x.event_type === "error")) {
    items.push({ role: "error", text: [e.error_type || "Error", e.error_message].filter(Boolean).join(": "), source: "error" });
  }
  return items;
}

function bubble(item) {
  const label = ROLE_LABELS[item.role];
  return h("div", { class: `bubble role-${label ? item.role : "other"}`, dataset: { role: item.role, source: item.source || "" } },
    h("div", { class: "who" }, label || item.role,
      item.name ? h("strong", { class: "tool-name" }, item.name) : null,
      item.id ? h("span", { class: "muted mono" }, item.id) : null),
    item.text || item.role !== "tool_call" ? h("div", { class: item.text ? "text" : "text muted" }, item.text || "(empty)") : null,
    item.args ? h("pre", { class: "args" }, item.args) : null);
}

function tracePage(view, id, params) {
  const root = h("div", {}, h("p", { class: "empty" }, "Loading the trace…"));
  view.append(root);
  const summary = h("section", { class: "panel", id: "trace-summary" });
  const waterfall = h("ol", { class: "waterfall", id: "waterfall", "aria-label": "Spans on one time axis" });
  const details = h("section", { class: "panel", id: "span-details" });
  const conversation = h("div", { class: "conversation", id: "conversation" });
  const events = new Map();  // span id -> its events, fetched when it is first selected
  let tree = null;
  let rows = [];
  let spans = new Map();
  let selected = null;
  let wanted = params.get("span") || id;
  let refreshing = null;
  let asked = 0;

  function renderSummary() {
    const failed = rows.filter((r) => FAILED_STATUSES.has(r.span.status)).length;
    const tokens = tree.tree_tokens || tree.tokens;
    fill(summary,
      h("h1", {}, `Trace · ${spanName(tree)} `, kindBadge(tree.kind), " ", badge(tree.status)),
      h("div", { class: "muted mono" }, tree.id),
      h("dl", { class: "facts" },
        fact("Started", when(tree.started_at)), fact("Duration", ms(tree.duration_ms)),
        fact("Spans", num(rows.length)),
        fact("Failed spans", failed ? h("span", { class: "error" }, num(failed)) : "0"),
        fact("Total tokens", h("span", { id: "trace-tokens", dataset: { value: tokens.total } },
          `${num(tokens.total)} (${num(tokens.input)} in / ${num(tokens.output)} out)`)),
        fact("Total cost", h("span", { id: "trace-cost", dataset: { value: tree.tree_cost_usd ?? "" } }, cost(tree.tree_cost_usd)))));
  }

  function renderWaterfall() {
    const starts = rows.map((r) => r.span.started_at).filter((t) => t !== null && t !== undefined);
    const t0 = Math.min(tree.started_at ?? Infinity, ...starts);
    const t1 = Math.max(t0 + 1, ...rows.map((r) => spanEnd(r.span) ?? t0));
    const total = t1 - t0;
    const pctOf = (value) => `${((100 * value) / total).toFixed(3)}%`;
    // round times on the axis (0, 1 s, 2 s, 3 s), about four of them, and a grid line at each
    const step = Math.max(1, niceMax(total / 4));
    const grid = `${((100 * step) / total).toFixed(3)}% 100%`;
    const marks = [];
    for (let t = 0; t <= total; t += step) marks.push(t);
    const ticks = h("div", { class: "ticks" }, marks.map((t) => {
      const text = t === 0 ? "0" : step >= 1000 ? `${num(t / 1000, step % 1000 ? 1 : 0)} s` : `${num(t)} ms`;
      const tick = h("span", { class: t / total > 0.92 ? "tick end" : "tick" }, text);
      tick.style.left = pctOf(t);
      return tick;
    }));
    const axis = h("li", { class: "span-row axis-row", "aria-hidden": "true" },
      h("span", { class: "muted" }, "Span"), ticks, h("span", { class: "span-nums muted" }, "duration · tokens · cost"));
    const track = (bar) => {
      const el = h("div", { class: "track" }, bar);
      el.style.backgroundSize = grid;
      return el;
    };
    fill(waterfall, axis, rows.map(({ span: x, depth }) => {
      const start = x.started_at ?? t0;
      const end = Math.max(start, spanEnd(x) ?? start);
      const failed = FAILED_STATUSES.has(x.status);
      const rolled = depth === 0 || (x.children || []).length > 0;  // a span with descendants: the tree's totals
      const tokens = rolled && x.tree_tokens ? x.tree_tokens : x.tokens;
      const dollarsShown = rolled && x.tree_cost_usd !== undefined ? x.tree_cost_usd : x.cost_usd;
      const kind = x.kind ? cssWord(x.kind) : "none";
      const bar = h("div", { class: `bar kind-${kind}${failed ? " failed" : ""}${x.ended_at == null ? " open" : ""}`,
        title: `${spanName(x)}: ${ms(x.duration_ms ?? end - start)}${failed ? ` (${x.status}${x.last_error ? `: ${x.last_error}` : ""})` : ""}` });
      bar.style.left = pctOf(start - t0);
      bar.style.width = pctOf(end - start);
      if (isLlm(x) && x.ttft_ms !== null && x.ttft_ms !== undefined && end > start) {
        const mark = h("span", { class: "ttft", title: `time to first token ${ms(x.ttft_ms)}`, dataset: { ttft: x.ttft_ms } });
        mark.style.left = `${Math.min(100, (100 * x.ttft_ms) / (end - start)).toFixed(3)}%`;
        bar.append(mark);
      }
      const label = h("button", { type: "button", class: "span-label", "aria-label": `${spanName(x)}, ${x.kind || "span"}, ${x.status}` },
        failed ? h("span", { class: "failed-mark", title: x.last_error || x.status }, "✕") : null,
        h("span", { class: "name" }, spanName(x)), kindBadge(x.kind),
        x.model ? h("span", { class: "model muted" }, x.model) : null);
      label.style.setProperty("--depth", String(depth));
      return h("li", {
        class: `span-row${failed ? " failed" : ""}${x.id === selected ? " selected" : ""}`,
        "aria-current": x.id === selected ? "true" : null,
        dataset: { id: x.id, depth, kind: x.kind || "", model: x.model || "", status: x.status,
          offset: start - t0, duration: end - start, tokens: tokens.total, cost: dollarsShown ?? "" },
        onclick: () => select(x.id, true),
      }, label, track(bar),
      h("span", { class: "span-nums" },
        h("span", { class: "duration" }, ms(x.duration_ms)),
        h("span", { class: "tokens", title: `${num(tokens.input)} in, ${num(tokens.output)} out, ${num(tokens.cache_read)} cache read, ` +
          `${num(tokens.reasoning)} reasoning${rolled ? " (this span and its descendants)" : ""}` },
        `${rolled && (x.children || []).length ? "Σ " : ""}${num(tokens.total)} tok`),
        h("span", { class: "cost" }, cost(dollarsShown))));
    }));
  }

  function renderDetails(x) {
    const t = x.tokens;
    const rolled = (x.children || []).length > 0;
    const t0 = tree.started_at ?? x.started_at;
    conversation.dataset.ready = "false";
    conversation.dataset.span = x.id;
    fill(details,
      h("h2", {}, `${spanName(x)} `, kindBadge(x.kind), " ", badge(x.status)),
      h("div", { class: "muted mono" }, x.id, " · ", sessionLink(x.id, "session page →")),
      h("dl", { class: "facts" },
        fact("Kind", x.kind || "–"), fact("Model", x.model || "–"),
        fact("Starts at", x.started_at ? relative(t0, x.started_at) : "–"), fact("Duration", ms(x.duration_ms)),
        isLlm(x) ? fact("Time to first token", ms(x.ttft_ms)) : null,
        fact("Tokens", `${num(t.input)} in / ${num(t.output)} out`),
        t.cache_read || t.cache_creation ? fact("Cache", `${num(t.cache_read)} read / ${num(t.cache_creation)} written`) : null,
        t.reasoning ? fact("Reasoning tokens", num(t.reasoning)) : null,
        fact("Cost", cost(x.cost_usd)),
        rolled && x.tree_tokens ? fact("With descendants", `${num(x.tree_tokens.total)} tokens, ${cost(x.tree_cost_usd)}`) : null,
        x.parent_id ? fact("Parent", spans.has(x.parent_id)
          ? h("a", { href: "#", onclick: (event) => { event.preventDefault(); select(x.parent_id, true); } }, spanName(spans.get(x.parent_id)))
          : sessionLink(x.parent_id)) : null),
      x.last_error ? h("p", { class: "error" }, x.last_error) : null,
      h("h2", { class: "conversation-title" }, "Conversation"),
      conversation);
    loadConversation(x);
  }

  async function loadConversation(x) {
    clear(conversation).append(h("p", { class: "empty" }, "Loading the messages…"));
    const ask = ++asked;
    let found = events.get(x.id);
    try {
      if (!found) {
        found = (await api(`/api/sessions/${encodeURIComponent(x.id)}`, { with_events: "true" })).events || [];
        events.set(x.id, found);
      }
    } catch (err) {
      if (ask === asked) fill(conversation, h("p", { class: "error" }, `Could not load the messages: ${err.message}`));
      conversation.dataset.ready = "true";
      return;
    }
    if (ask !== asked) return;  // another span was selected meanwhile
    const items = conversationOf(x, found);
    fill(conversation, items.length ? items.map(bubble)
      : h("p", { class: "empty" }, "No messages were recorded for this span (capture_content may be off)."));
    conversation.dataset.ready = "true";
  }

  function select(spanId, remember) {
    const x = spans.get(spanId) || tree;
    selected = x.id;
    for (const row of waterfall.querySelectorAll("li.span-row[data-id]")) {
      const current = row.dataset.id === selected;
      row.classList.toggle("selected", current);
      if (current) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
    renderDetails(x);
    // the selection is kept in the address (without a new history entry or a reload of the page)
    if (remember) history.replaceState(null, "", `#/trace/${encodeURIComponent(tree.id)}?span=${encodeURIComponent(selected)}`);
  }

  async function loadTree(rootId) {
    tree = await api(`/api/sessions/${encodeURIComponent(rootId)}`, { tree: "true" });
    rows = flattenTree(tree);
    spans = new Map(rows.map((r) => [r.span.id, r.span]));
  }

  async function load() {
    try {
      // the session asked for may be any span of the tree: climb to its root first
      let top = await api(`/api/sessions/${encodeURIComponent(id)}`, { tree: "true" });
      const climbed = new Set([top.id]);
      while (top.parent_id && !climbed.has(top.parent_id) && climbed.size <= MAX_TREE_DEPTH) {
        let parent;
        try {
          parent = await api(`/api/sessions/${encodeURIComponent(top.parent_id)}`);
        } catch (err) {
          if (err.status === 404) break;  // a parent never stored (a span whose parent was not exported): start here
          throw err;
        }
        top = parent;
        climbed.add(top.id);
      }
      if (top.id === id) {
        tree = top;
        rows = flattenTree(tree);
        spans = new Map(rows.map((r) => [r.span.id, r.span]));
      } else {
        await loadTree(top.id);
      }
    } catch (err) {
      fill(root, h("p", {}, h("a", { href: "#/sessions" }, "← Sessions")),
        h("p", { class: "error" }, err.status === 404 ? `No session ${id}.` : err.message));
      view.dataset.ready = "true";
      return;
    }
    if (!spans.has(wanted)) wanted = tree.id;
    selected = wanted;
    renderSummary();
    renderWaterfall();
    fill(root,
      h("p", { class: "crumbs" }, h("a", { href: "#/sessions" }, "← Sessions"), sessionLink(tree.id, "Root session")),
      summary,
      h("section", { class: "panel" }, h("h2", {}, "Waterfall"),
        h("p", { class: "muted legend" }, "Each span on the trace's time axis, indented under the span it ran in; ",
          h("span", { class: "ttft-key" }), " marks the first token of a model call, ",
          h("span", { class: "failed-key" }), " a failed span. Click a span for its details and messages."),
        h("div", { class: "scroll" }, waterfall)),
      details);
    select(selected, id !== tree.id || params.get("span") !== null);
    view.dataset.ready = "true";
  }

  waterfall.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const from = event.target.closest("li[data-id]")?.dataset.id ?? selected;  // the focused span, else the selected one
    const index = rows.findIndex((r) => r.span.id === from);
    const next = rows[index + (event.key === "ArrowDown" ? 1 : -1)];
    if (!next) return;
    event.preventDefault();
    select(next.span.id, true);
    waterfall.querySelector(`li[data-id="${CSS.escape(next.span.id)}"] button`)?.focus();
  });

  // a span of this tree (or a new child of one) changed: read the tree again, shortly, keeping the selection
  const stop = on("event", (e) => {
    if (!tree) return;
    const ours = spans.has(e.session_id) || (e.event_type === "start" && spans.has(e.parent_session_id));
    if (!ours) return;
    events.delete(e.session_id);
    clearTimeout(refreshing);
    refreshing = setTimeout(async () => {
      try {
        await loadTree(tree.id);
      } catch (err) {
        return;
      }
      renderSummary();
      renderWaterfall();
      select(spans.has(selected) ? selected : tree.id, false);
    }, 600);
  });
  load();
  return () => {
    stop();
    clearTimeout(refreshing);
  };
}

// -- anomalies

const STEPS = { "6h": "1m", "24h": "1m", "7d": "10m" };

function anomaliesPage(view, params) {
  const since = STEPS[params.get("since")] ? params.get("since") : "24h";
  const sensitivity = ["low", "medium", "high"].includes(params.get("sensitivity")) ? params.get("sensitivity") : "medium";
  const list = h("div", { id: "anomalies" }, h("p", { class: "empty" }, "Running the detectors…"));
  const choose = (name, options, value, label) => {
    const el = h("select", { name, "aria-label": label, onchange: () => {
      const next = new URLSearchParams(params);
      next.set(name, el.value);
      setParams("/anomalies", next);
    } }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
    return h("label", {}, label, el);
  };
  let heard = 0;
  const newer = h("div", { class: "notice", id: "new-anomalies", hidden: true },
    h("button", { type: "button", class: "quiet", onclick: route }));
  view.append(h("h1", {}, "Anomalies"),
    h("div", { class: "filters" },
      choose("since", [["6h", "last 6 hours"], ["24h", "last 24 hours"], ["7d", "last 7 days"]], since, "Window"),
      choose("sensitivity", [["low", "low"], ["medium", "medium"], ["high", "high"]], sensitivity, "Sensitivity")),
    newer, list);
  if (state.alerts) {
    const panel = h("section", { class: "panel", id: "alerts" }, h("h2", {}, "Alerts"), h("p", { class: "empty" }, "Loading…"));
    view.insertBefore(panel, list);
    loadAlerts(panel);
  }
  showUnseenAnomalies(0);
  if (!state.analytics) {
    clear(list).append(h("p", { class: "empty" }, "Anomaly detection needs the analytics plugin."));
    view.dataset.ready = "true";
    return null;
  }
  const stop = on("anomaly", (a) => {
    heard += 1;
    newer.firstChild.textContent = `${heard} new ${heard === 1 ? "anomaly" : "anomalies"} found live (latest: ${a.metric} at ${when(a.timestamp)}): refresh`;
    newer.hidden = false;
  });
  (async () => {
    try {
      const step = STEPS[since];
      const found = await api("/api/anomalies", { since, sensitivity, step });
      const anomalies = found.anomalies.sort((a, b) => b.timestamp - a.timestamp);
      clear(list);
      if (!anomalies.length) {
        list.append(h("p", { class: "empty" }, "No anomalies in this window. The detectors learn each metric's pattern per minute; they need some history first."));
      } else {
        list.append(h("p", { class: "muted" }, `${anomalies.length} found; charts show the metric around each one, the shaded band is the expected range.`));
        const series = {};
        for (const metric of new Set(anomalies.map((a) => a.metric))) {
          series[metric] = (await api("/api/series", { metric, since, step })).points;
        }
        const stepMs = step === "10m" ? 600000 : 60000;
        for (const a of anomalies.slice(0, 100)) {
          const around = series[a.metric].filter(([t]) => Math.abs(t - a.timestamp) <= 30 * stepMs);
          list.append(h("section", { class: "panel anomaly", dataset: { metric: a.metric, timestamp: a.timestamp } },
            h("div", {},
              h("h2", {}, `${a.metric} `, badge(a.severity)),
              h("p", {}, a.description),
              h("dl", { class: "facts" }, fact("When", `${when(a.timestamp)} (${ago(a.timestamp)})`),
                fact("Value", num(a.value, 3)),
                fact("Expected", `${num(a.expected_low, 3)} – ${num(a.expected_high, 3)}`),
                fact("Score", num(a.score, 4)), fact("Detector", a.detector || "–"))),
            lineChart(around, { mark: [a.timestamp, a.value], band: [a.expected_low, a.expected_high],
              label: `${a.metric} around the anomaly` })));
        }
      }
    } catch (err) {
      clear(list).append(h("p", { class: "error" }, `Could not run the detectors: ${err.message}`));
    }
    view.dataset.ready = "true";
  })();
  return stop;
}

const ALERT_ROWS = 10;

// where alerts go (channel type and host only: the server never sends a webhook's path) and how delivery went
async function loadAlerts(panel) {
  const body = h("div", {});
  clear(panel).append(h("h2", {}, "Alerts"), body);
  let status;
  try {
    status = await api("/api/alerts", { limit: ALERT_ROWS });
  } catch (err) {
    body.append(h("p", { class: "error" }, `Could not load the alerts: ${err.message}`));
    return;
  }
  panel.dataset.enabled = String(status.enabled);
  if (!status.enabled) {
    body.append(h("p", { class: "muted" }, "Alerts are off. Add channels (log, webhook, Slack) under ",
      h("code", {}, "[analytics.alerts]"), " and turn on continuous detection (",
      h("code", {}, "[analytics.anomaly] enabled = true"), ") to be told of anomalies as they are found."));
    return;
  }
  const counts = status.counts || {};
  body.append(
    h("p", { class: "muted", id: "alert-channels" }, "Channels: ",
      status.channels.map((c, i) => [i ? ", " : "", h("strong", {}, c.type), c.target ? ` → ${c.target}` : "",
        c.min_severity && c.min_severity !== "low" ? ` (${c.min_severity} and up)` : ""])),
    h("div", { class: "grid counts", id: "alert-counts" },
      ["sent", "failed", "deduplicated", "dropped"].map((name) => h("div", { class: "card", dataset: { count: name, value: counts[name] ?? 0 } },
        h("div", { class: "label" }, name), h("div", { class: "value" }, num(counts[name] ?? 0))))));
  if (!status.recent.length) {
    body.append(h("p", { class: "empty" }, "No alert sent yet."));
    return;
  }
  body.append(h("div", { class: "scroll" }, h("table", { id: "alert-log" },
    h("thead", {}, h("tr", {}, ["When", "Anomaly", "Severity", "Channel", "Outcome"].map((t) => h("th", {}, t)))),
    h("tbody", {}, status.recent.map((d) => h("tr", { dataset: { outcome: d.outcome, channel: d.channel || "" } },
      h("td", { class: "mono" }, when(d.at)),
      h("td", {}, h("span", { title: d.description || "" }, `${d.metric} at ${when(d.timestamp)}`)),
      h("td", {}, badge(d.severity || "medium")),
      h("td", {}, d.channel || "–"),
      h("td", {}, badge(d.outcome, { sent: "completed", failed: "failed", dropped: "failed" }[d.outcome]),
        d.error ? h("span", { class: "muted" }, ` ${d.error}`) : null)))))));
}

// ---------------------------------------------------------------- routing and start

let leave = null;

function route() {
  const { path, params } = routeParams();
  const view = clear(document.getElementById("view"));
  view.dataset.ready = "false";
  if (leave) leave();
  leave = null;
  let page = "overview";
  if (path.startsWith("/session/")) {
    page = "session";
    leave = sessionPage(view, decodeURIComponent(path.slice("/session/".length)));
  } else if (path.startsWith("/trace/")) {
    page = "trace";
    leave = tracePage(view, decodeURIComponent(path.slice("/trace/".length)), params);
  } else if (path === "/sessions") {
    page = "sessions";
    leave = sessionsPage(view, params);
  } else if (path === "/anomalies") {
    page = "anomalies";
    leave = anomaliesPage(view, params);
  } else {
    leave = overviewPage(view);
  }
  document.body.dataset.page = page;
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.nav === page || ((page === "session" || page === "trace") && link.dataset.nav === "sessions");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · vibekit telemetry`;
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  document.getElementById("theme").textContent = theme === "dark" ? "Light" : "Dark";
}

async function start() {
  const saved = localStorage.getItem(THEME_STORE);
  applyTheme(saved || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  document.getElementById("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_STORE, next);
    applyTheme(next);
  });
  const forget = document.getElementById("forget-key");
  forget.hidden = !state.key;
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    forget.hidden = true;
    connectLive();
    route();
  });
  try {
    const doc = await (await fetch("/openapi.json", { cache: "no-store" })).json();
    state.analytics = Boolean(doc.paths && doc.paths["/api/metrics"]);
    state.alerts = Boolean(doc.paths && doc.paths["/api/alerts"]);
    const name = doc.info && doc.info.title ? doc.info.title.replace(/ telemetry API$/, "") : "";
    // OpenTelemetry's placeholder for a service without a name says nothing worth a header
    if (name && name !== "unknown_service") document.getElementById("service-name").textContent = name;
  } catch (err) {
    showBanner(`Cannot reach the telemetry API: ${err.message}`);
  }
  window.addEventListener("hashchange", route);
  connectLive();
  route();
}

document.addEventListener("DOMContentLoaded", start);
