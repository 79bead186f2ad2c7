// meshcast creator studio: a dependency-free ES module over the origin's JSON APIs, plus
// tus-js-client (vendor/tus.min.js, from npm) for resumable uploads. Pages are hash
// routes; the API key lives in sessionStorage (this tab only) and goes to the origin in
// Authorization headers. Served by edges too: there it hands over to the origin's studio,
// so no key ever passes through an edge.

const KEY_STORE = "meshcast.apiKey";
const POLL_MS = 2000;
const HISTORY = 90; // chart points per stream (3 min at 2 s)
const UPLOAD_CHUNK = 5 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
};

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  me: null,
  keys: [],
  streams: new Map(), // name -> latest GET /api/streams entry
  history: new Map(), // name -> [{t, kbps, fps, viewers}]
  assets: [],
  products: [],
  recordings: new Map(), // asset -> recording row (kind, stream, parent)
  newKeys: new Map(), // name -> the secret, shown once after creation
  notes: new Map(), // asset -> the last message of an action on it (survives redraws)
  clipSeconds: new Map(), // stream -> the clip length typed
  clipNotes: new Map(), // stream -> the last clip's outcome
  timer: null,
};

// ---- API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (state.key) init.headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function signInMessage(error) {
  if (error.status === 429) {
    const wait = error.body && error.body.retry_after ? ` in ${error.body.retry_after} s` : " later";
    return `Too many failed sign-ins from this address: try again${wait}.`;
  }
  if (error.status === 401) return `Sign-in refused: ${error.message.replace(/^API key refused: /, "")}.`;
  return `Sign-in failed: ${error.message}`;
}

// ---- formatting and small widgets ----------------------------------------------------

const fmtDuration = (s) => {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
};
const fmtBytes = (n) => {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1000)));
  return `${(n / 1000 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
};

async function copyText(text, status) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard permission (plain http on a LAN address): select-and-copy instead.
    const area = el("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (status) status.textContent = "copied";
}

function copyBlock(label, text, id) {
  const status = el("span", { class: "muted" });
  return el("div", {},
    el("div", { class: "row" }, el("span", {}, label),
      el("button", { type: "button", id, onclick: () => copyText(text, status) }, "Copy"), status),
    el("pre", {}, text));
}

// An SVG line chart of one series (no library: a polyline and two labels).
function chart(points, field, label, width = 320, height = 80) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("data-series", field);
  const values = points.map((p) => p[field] || 0);
  const max = Math.max(1, ...values);
  const step = width / Math.max(1, HISTORY - 1);
  const offset = width - step * (values.length - 1);
  const coords = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(height - 14 - (v / max) * (height - 24)).toFixed(1)}`);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", coords.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#9fb4ff");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  const text = document.createElementNS(svg.namespaceURI, "text");
  text.setAttribute("x", 4);
  text.setAttribute("y", height - 3);
  const last = values.length ? values[values.length - 1] : 0;
  text.textContent = `${label}: ${Math.round(last * 10) / 10} (max ${Math.round(max * 10) / 10})`;
  svg.append(text);
  return svg;
}

// ---- routing -----------------------------------------------------------------------

const PAGES = ["signin", "streams", "uploads", "library", "embed", "network"];

function show(page) {
  if (!state.me) page = "signin";
  else if (!PAGES.includes(page) || page === "signin") page = "streams";
  for (const name of PAGES) $(`page-${name}`).hidden = name !== page;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.getAttribute("href") === `#${page}`);
  }
  document.body.dataset.page = page;
  refresh(page).catch(reportError);
}

function current() { return document.body.dataset.page; }

function reportError(error) {
  if (error instanceof ApiError && error.status === 401 && state.me) {
    signOut(`Signed out: ${error.message}`);
    return;
  }
  console.error(error);
}

async function refresh(page) {
  if (page === "streams") await refreshStreams();
  else if (page === "library") await refreshLibrary();
  else if (page === "embed") await refreshEmbed();
  else if (page === "network") await refreshNetwork();
}

// ---- sign-in -------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("/api/me");
  } catch (error) {
    state.key = null;
    state.me = null;
    throw error;
  }
  sessionStorage.setItem(KEY_STORE, key);
  $("owner").textContent = `${state.me.owner}${state.me.kind === "admin" ? " (admin)" : ""}`;
  $("who").hidden = false;
  $("nav").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    if (current() === "streams") refreshStreams().catch(reportError);
    else if (current() === "library") refreshLibrary().catch(reportError);
  }, POLL_MS);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORE);
  clearInterval(state.timer);
  Object.assign(state, { key: null, me: null, keys: [], assets: [] });
  $("who").hidden = true;
  $("nav").hidden = true;
  $("signin-error").textContent = message;
  location.hash = "#signin";
  show("signin");
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    await signIn($("api-key").value.trim());
    $("api-key").value = "";
    location.hash = "#streams";
    show("streams");
  } catch (error) {
    $("signin-error").textContent = error instanceof ApiError ? signInMessage(error) : `Sign-in failed: ${error.message}`;
  }
});
$("sign-out").addEventListener("click", () => signOut());

// ---- streams -------------------------------------------------------------------------

function record(name, entry) {
  const history = state.history.get(name) || [];
  const previous = history[history.length - 1];
  const t = Date.now() / 1000;
  let kbps = 0, fps = 0;
  if (previous && previous.started === entry.started_at && t > previous.t) {
    kbps = Math.max(0, ((entry.bytes - previous.bytes) * 8) / (t - previous.t) / 1000);
    const frames = entry.video ? entry.video.frames : 0;
    fps = Math.max(0, (frames - previous.frames) / (t - previous.t));
  }
  history.push({ t, kbps, fps, viewers: entry.viewers || 0, bytes: entry.bytes,
                 frames: entry.video ? entry.video.frames : 0, started: entry.started_at });
  while (history.length > HISTORY) history.shift();
  state.history.set(name, history);
}

async function refreshStreams() {
  const [keys, streams] = await Promise.all([api("/api/keys"), api("/api/streams")]);
  state.keys = keys.keys;
  state.streams = new Map(streams.streams.map((s) => [s.name, s]));
  for (const [name, entry] of state.streams) if (entry.state === "live") record(name, entry);
  renderStreams();
}

// Ingest health from the last samples: nothing arriving, a frame rate well under the
// stream's own, or fine.
function health(entry, history) {
  if (!entry || entry.state !== "live" || history.length < 3) return null;
  const recent = history.slice(-3);
  if (recent.every((p) => p.kbps === 0)) return { level: "stalled", text: "no data for 4 s" };
  const nominal = entry.video && entry.video.fps;
  const fps = recent.reduce((a, p) => a + p.fps, 0) / recent.length;
  if (nominal && fps < nominal * 0.8) return { level: "unsteady", text: `${fps.toFixed(1)} of ${nominal} fps` };
  return { level: "healthy", text: "receiving steadily" };
}

function ffmpegCommand(name) {
  const key = state.newKeys.get(name) || "STREAM_KEY";
  return `ffmpeg -re -i INPUT.mp4 -c:v libx264 -preset veryfast -g 60 -c:a aac -b:a 128k -f flv ${state.me.rtmp}/${key}`;
}

function renderStreams() {
  const list = $("stream-list");
  const typing = document.activeElement && document.activeElement.tagName === "INPUT" &&
    list.contains(document.activeElement);
  if (typing) return; // do not redraw under someone typing a clip length
  const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.dataset.name));
  list.replaceChildren();
  const active = state.keys.filter((k) => !k.revoked);
  if (!active.length) list.append(el("p", { class: "muted" }, "No stream keys yet: create one above."));
  for (const key of active) {
    const s = state.streams.get(key.name);
    const live = s && s.state === "live";
    const history = state.history.get(key.name) || [];
    const rec = s && s.recording;
    const ok = health(s, history);
    const row = el("div", { class: "stream", "data-stream": key.name },
      el("h3", {}, key.name,
        el("span", { class: `badge ${live ? "live" : ""}`, "data-field": "state" }, s ? s.state : "offline"),
        ok ? el("span", { class: `badge health ${ok.level}`, "data-field": "health", title: ok.text }, ok.level) : null,
        key.record ? el("span", { class: "badge" }, "records") : el("span", { class: "badge" }, "no recording")),
      el("div", { class: "stats" },
        el("span", {}, "viewers ", el("b", { "data-field": "viewers" }, String(s ? s.viewers || 0 : 0))),
        el("span", {}, "peak ", el("b", { "data-field": "peak" }, String(s ? s.peak_viewers || 0 : 0))),
        el("span", {}, "watch time ", el("b", {}, fmtDuration(s ? s.watch_seconds : 0))),
        el("span", {}, "bitrate ", el("b", {}, s ? `${s.bitrate_kbps} kbit/s` : "–")),
        el("span", {}, "fps ", el("b", {}, s && s.video && s.video.fps ? String(s.video.fps) : "–")),
        el("span", {}, "video ", el("b", {}, s && s.video ? `${s.video.codec} ${s.video.width}x${s.video.height}` : "–")),
        rec ? el("span", { "data-field": "recording" }, "recording ",
          el("b", {}, rec.state), rec.reason ? el("span", { class: "muted" }, ` (${rec.reason})`) : null) : null),
      live && history.length ? el("div", { class: "charts" },
        chart(history, "kbps", "ingest kbit/s"), chart(history, "fps", "frames/s"),
        chart(history, "viewers", "viewers")) : null,
      el("div", { class: "row" },
        el("a", { href: `/player/?stream=${encodeURIComponent(key.name)}`, target: "_blank" }, "Watch"),
        el("label", {}, "Clip last ", el("input", { type: "number", min: 1, value: state.clipSeconds.get(key.name) || 30,
          class: "clip-seconds", onchange: (e) => state.clipSeconds.set(key.name, e.target.value) }), " s"),
        el("button", { type: "button", class: "clip", onclick: (e) => clip(key.name, e.target) }, "Clip"),
        el("span", { class: "clip-state muted" }, state.clipNotes.get(key.name) || ""),
        el("button", { type: "button", class: "danger revoke", onclick: () => revoke(key.name) }, "Revoke key")),
      settings(key.name, open.has(key.name)));
    list.append(row);
  }
}

function settings(name, open) {
  const whip = `${state.me.whip}${encodeURIComponent(name)}`;
  const details = el("details", { "data-name": name, open },
    el("summary", {}, "Publishing settings (OBS, FFmpeg, WHIP)"),
    copyBlock("OBS: Server", state.me.rtmp, `copy-server-${name}`),
    copyBlock("OBS: Stream key", state.newKeys.get(name) || "(shown once, when the key is created)", `copy-key-${name}`),
    copyBlock("FFmpeg", ffmpegCommand(name), `copy-ffmpeg-${name}`),
    copyBlock("WHIP URL (bearer token: the stream key)", whip, `copy-whip-${name}`),
    el("p", { class: "muted" }, "OBS: Settings → Stream → Service: Custom. Keyframe interval 2 s; x264 preset veryfast."));
  return details;
}

$("new-key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("keys-error").textContent = "";
  const name = $("new-key-name").value.trim();
  try {
    const created = await api("/api/keys", { method: "POST", body: { name, record: $("new-key-record").checked } });
    state.newKeys.set(created.name, created.key);
    const result = $("new-key-result");
    result.hidden = false;
    result.replaceChildren(
      el("p", {}, `Stream key of ${created.name} (copy it now: it is not shown again):`),
      el("pre", { id: "new-key-value" }, created.key),
      copyBlock("FFmpeg", ffmpegCommand(created.name), "copy-new-ffmpeg"));
    $("new-key-name").value = "";
    await refreshStreams();
  } catch (error) {
    $("keys-error").textContent = error.message;
  }
});

async function revoke(name) {
  if (!confirm(`Revoke the stream key of ${name}? Publishing with it stops working.`)) return;
  try {
    await api(`/api/keys/${encodeURIComponent(name)}`, { method: "DELETE" });
    state.newKeys.delete(name);
    await refreshStreams();
  } catch (error) {
    $("keys-error").textContent = error.message;
  }
}

async function clip(name, button) {
  const row = button.closest(".stream");
  const seconds = Number(row.querySelector(".clip-seconds").value);
  state.clipSeconds.set(name, String(seconds));
  const say = (text) => {
    state.clipNotes.set(name, text);
    const status = $("stream-list").querySelector(`[data-stream="${CSS.escape(name)}"] .clip-state`);
    if (status) status.textContent = text;
  };
  say("cutting…");
  try {
    const made = await api(`/api/streams/${encodeURIComponent(name)}/clips`, { method: "POST", body: { seconds } });
    say(`clip ${made.id} (${fmtDuration(made.duration)}): in the library`);
  } catch (error) {
    say(error.message);
  }
}

// ---- uploads -------------------------------------------------------------------------

function startUpload(file) {
  const progress = el("progress", { max: 100, value: 0 });
  const label = el("span", { class: "upload-state" }, "starting…");
  const pause = el("button", { type: "button", class: "pause" }, "Pause");
  const row = el("div", { class: "upload", "data-file": file.name },
    el("div", {}, el("b", {}, file.name), " ", el("span", { class: "muted" }, fmtBytes(file.size))),
    el("div", { class: "row" }, progress, label, pause));
  $("uploads-list").prepend(row);
  const upload = new window.tus.Upload(file, {
    endpoint: "/api/vod",
    headers: { Authorization: `Bearer ${state.key}` },
    chunkSize: UPLOAD_CHUNK,
    retryDelays: [0, 1000, 3000, 5000],
    metadata: { filename: file.name, filetype: file.type || "video/mp4" },
    // The fingerprint is the file; a reloaded page resumes where the last one stopped.
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      progress.value = (sent / total) * 100;
      label.textContent = `uploaded ${((sent / total) * 100).toFixed(0)} %`;
      row.dataset.sent = String(sent);
    },
    onError(error) {
      label.textContent = `upload failed: ${error.message}`;
      row.dataset.state = "error";
    },
    onSuccess() {
      const id = upload.url.split("/").slice(-2)[0];
      row.dataset.id = id;
      label.textContent = "uploaded; transcoding…";
      pause.remove();
      watchTranscode(id, progress, label, row);
    },
  });
  let paused = false;
  pause.addEventListener("click", async () => {
    if (!paused) {
      await upload.abort();
      pause.textContent = "Resume";
      label.textContent += " (paused)";
    } else {
      pause.textContent = "Pause";
      upload.start(); // asks the server for its offset (HEAD) and goes on from there
    }
    paused = !paused;
  });
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) {
      upload.resumeFromPreviousUpload(previous[0]);
      label.textContent = "resuming an earlier upload…";
    }
    upload.start();
  });
  return upload;
}

async function watchTranscode(id, progress, label, row) {
  for (;;) {
    const job = await api(`/api/vod/${id}`);
    progress.value = job.progress;
    row.dataset.state = job.state;
    if (job.state === "ready") {
      label.replaceChildren("ready ", el("a", { href: job.playback.player, target: "_blank" }, "play"));
      return;
    }
    if (job.state === "failed") {
      label.textContent = `transcode failed: ${job.error}`;
      return;
    }
    label.textContent = `${job.state} ${job.progress.toFixed(0)} %`;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

$("file-input").addEventListener("change", (event) => {
  for (const file of event.target.files) startUpload(file);
  event.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  for (const file of event.dataTransfer.files) startUpload(file);
});

// ---- library -------------------------------------------------------------------------

async function loadCatalogue() {
  const [vod, products, keys] = await Promise.all([api("/api/vod"), api("/api/products"), api("/api/keys")]);
  const mine = state.me.kind === "admin" ? vod.assets : vod.assets.filter((a) => a.owner === state.me.owner);
  state.assets = mine;
  state.products = products.products;
  state.keys = keys.keys;
  // Recordings and clips say which stream they came from (GET /api/vod: source, stream).
  state.recordings = new Map(mine.filter((a) => a.source && a.source !== "upload").map((a) =>
    [a.id, { asset: a.id, kind: a.source === "clip" ? "clip" : "live", stream: a.stream, parent: a.parent, reason: a.reason }]));
}

function priceOf(assetId) {
  const scope = `vod/${assetId}`;
  return state.products.find((p) => p.kind === "tvod" && p.scopes.includes(scope));
}

async function refreshLibrary() {
  await loadCatalogue();
  const list = $("library-list");
  const focused = document.activeElement && document.activeElement.closest(".card");
  if (focused) return; // someone is typing a price: do not redraw under them
  list.replaceChildren();
  if (!state.assets.length) list.append(el("p", { class: "muted" }, "Nothing yet: upload a file or go live with a recording key."));
  for (const asset of [...state.assets].reverse()) list.append(card(asset));
}

// Moderation findings and captions come from edges running those plugins (they are edge
// plugins): the studio asks the edge named here, never sending it the API key.
const PLUGIN_EDGE = "meshcast.pluginEdge";

function pluginEdge() {
  return (localStorage.getItem(PLUGIN_EDGE) || "").replace(/\/$/, "");
}

async function pluginInfo(asset, rec, node) {
  const edge = pluginEdge();
  if (!edge) return;
  const parts = [];
  try {
    const r = await fetch(`${edge}/api/moderation/vod/${asset.id}`);
    if (r.ok) {
      const m = await r.json();
      parts.push(`moderation: ${m.state}${m.flagged ? `, ${m.flagged} flagged` : ""}${m.blocked ? ", blocked" : ""}`);
    } else parts.push("moderation: –");
  } catch { parts.push("moderation: edge unreachable"); }
  if (rec && rec.kind === "live") {
    try {
      const r = await fetch(`${edge}/api/captions/${encodeURIComponent(rec.stream)}`);
      parts.push(r.ok ? `captions: ${(await r.json()).segments.length} live segments (not recorded)` : "captions: none");
    } catch { parts.push("captions: edge unreachable"); }
  }
  node.textContent = parts.join(" · ");
}

function card(asset) {
  const rec = state.recordings.get(asset.id);
  const clips = [...state.recordings.values()].filter((r) => r.parent === asset.id);
  const product = priceOf(asset.id);
  const status = el("span", { class: "card-state muted" }, state.notes.get(asset.id) || "");
  const price = el("input", { type: "number", min: 0, step: "0.01", size: 6, class: "price",
                              value: product ? (product.price_cents / 100).toFixed(2) : "" });
  const policy = el("span", { class: "policy" }, "…");
  const plugins = el("div", { class: "muted plugins" });
  if (asset.state === "ready") pluginInfo(asset, rec, plugins);
  api(`/api/access/vod/${asset.id}`).then((p) => { policy.textContent = p.access; }).catch(() => { policy.textContent = "?"; });
  const node = el("div", { class: "card", "data-asset": asset.id },
    asset.state === "ready" && asset.poster
      ? el("img", { src: `/vod/${asset.id}/poster.jpg`, alt: "", loading: "lazy", onerror: (e) => e.target.replaceWith(el("div", { class: "poster-missing" })) })
      : el("div", { class: "poster-missing" }),
    el("div", {}, el("b", {}, asset.filename || asset.id)),
    el("div", { class: "muted" },
      `${rec ? (rec.kind === "clip" ? "clip" : "recording") : "upload"} · ${asset.state}` +
      (asset.state === "transcoding" || asset.state === "queued" ? ` ${asset.progress} %` : "") +
      ` · ${fmtDuration(asset.duration)} · ${fmtBytes(asset.size)}`),
    el("div", { class: "muted" }, "renditions: ", asset.renditions.join(", ") || "–"),
    el("div", { class: "muted" }, "access: ", policy, product ? ` · price ${(product.price_cents / 100).toFixed(2)} ${product.currency}` : ""),
    rec && rec.reason ? el("div", { class: "muted" }, rec.reason) : null,
    plugins,
    clips.length ? el("div", {}, "clips: ", ...clips.map((c) => el("a", { href: `/player/?vod=${c.asset}`, target: "_blank" }, `${c.asset} `))) : null,
    el("div", { class: "row" },
      asset.state === "ready" ? el("a", { href: `/player/?vod=${asset.id}`, target: "_blank" }, "Play") : null,
      el("label", {}, "Price ", price),
      el("button", { type: "button", class: "set-price", onclick: () => setPrice(asset, price.value, status) }, "Set price"),
      el("button", { type: "button", class: "danger delete", onclick: () => remove(asset, status) }, "Delete")),
    status);
  return node;
}

async function setPrice(asset, value, status) {
  const note = (text) => { state.notes.set(asset.id, text); status.textContent = text; };
  const cents = Math.round(Number(value) * 100);
  if (!Number.isFinite(cents) || cents < 0 || value === "") {
    note("price must be a number ≥ 0");
    return;
  }
  try {
    if (cents === 0) {
      await api(`/api/access/vod/${asset.id}`, { method: "PUT", body: { access: "public" } });
      note("free to watch (public)");
    } else {
      // A rental: a 48 h TVOD product for this asset; viewers then need a token.
      await api("/api/products", { method: "POST", body: {
        kind: "tvod", name: asset.filename || asset.id, price_cents: cents, currency: "USD",
        duration_s: 48 * 3600, scopes: [`vod/${asset.id}`] } });
      await api(`/api/access/vod/${asset.id}`, { method: "PUT", body: { access: "token" } });
      note(`price set: ${(cents / 100).toFixed(2)} USD (48 h rental)`);
    }
    document.activeElement.blur();
    await refreshLibrary();
  } catch (error) {
    note(error.message);
  }
}

async function remove(asset, status) {
  if (!confirm(`Delete ${asset.filename || asset.id}? Its files are removed.`)) return;
  try {
    await api(`/api/vod/${asset.id}/upload`, { method: "DELETE", headers: { "Tus-Resumable": "1.0.0" } });
    await refreshLibrary();
  } catch (error) {
    state.notes.set(asset.id, error.message);
    status.textContent = error.message;
  }
}

$("plugin-edge").value = pluginEdge();
$("plugin-edge-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(PLUGIN_EDGE, $("plugin-edge").value.trim());
  refreshLibrary().catch(reportError);
});

// ---- embed ---------------------------------------------------------------------------

async function refreshEmbed() {
  await loadCatalogue();
  const select = $("embed-source");
  const previous = select.value;
  select.replaceChildren(
    ...state.keys.filter((k) => !k.revoked).map((k) => el("option", { value: `stream=${k.name}` }, `live: ${k.name}`)),
    ...state.assets.filter((a) => a.state === "ready").map((a) => el("option", { value: `vod=${a.id}` }, `VOD: ${a.filename || a.id}`)));
  if (previous && [...select.options].some((o) => o.value === previous)) select.value = previous;
  renderEmbed();
}

function embedCode() {
  const source = $("embed-source").value;
  if (!source) return "";
  const [kind, name] = source.split("=");
  const base = `${location.origin}/player/`;
  const dash = $("embed-format").value === "dash";
  if ($("embed-kind").value === "iframe") {
    const query = `${kind}=${encodeURIComponent(name)}${dash ? "&format=dash" : ""}`;
    return `<iframe src="${base}embed.html?${query}" width="960" height="540" allow="autoplay; fullscreen" allowfullscreen style="border:0"></iframe>`;
  }
  return `<script src="${base}meshcast-player.js"></script>\n` +
    `<meshcast-player ${kind}="${name}"${dash ? ' format="dash"' : ""} style="width:960px"></meshcast-player>`;
}

function renderEmbed() {
  const code = embedCode();
  $("embed-code").value = code;
  $("copy-state").textContent = "";
  // The preview is the code itself, rendered in a frame of its own.
  $("embed-preview").srcdoc = code ? `<!doctype html><body style="margin:0;background:#000">${code}</body>` : "";
}

for (const id of ["embed-source", "embed-kind", "embed-format"]) $(id).addEventListener("change", renderEmbed);
$("copy-embed").addEventListener("click", () => copyText($("embed-code").value, $("copy-state")));

// ---- contributor network -------------------------------------------------------------

async function refreshNetwork() {
  let nodes, rewards;
  try {
    [nodes, rewards] = await Promise.all([api("/api/nodes"), api("/api/rewards")]);
  } catch (error) {
    $("network-state").textContent = error.status === 404
      ? "This origin does not coordinate a contributor network."
      : `Network unavailable: ${error.message}`;
    return;
  }
  const totals = new Map();
  const flags = new Map(); // node -> flags of its latest closed epoch (why a reward is low)
  for (const row of rewards.epochs) {
    flags.set(row.node, [...new Set(Object.values(row.kinds || {}).flatMap((k) => k.flags || []))]);
    const t = totals.get(row.node) || { bytes: 0, storage: 0, compute: 0 };
    for (const [kind, v] of Object.entries(row.kinds || {})) {
      const slot = kind.includes("storage") ? "storage" : kind.includes("infer") || kind.includes("compute") ? "compute" : "bytes";
      t[slot] += v.verified || 0;
    }
    totals.set(row.node, t);
  }
  $("network-state").textContent = `${nodes.nodes.filter((n) => n.live).length} of ${nodes.nodes.length} nodes live`;
  $("network-nodes").replaceChildren(el("table", { id: "nodes-table" },
    el("tr", {}, ...["node", "url", "live", "verified bytes", "verified storage", "verified compute", "reward", "flags (last epoch)"].map((h) => el("th", {}, h))),
    ...nodes.nodes.map((n) => {
      const t = totals.get(n.node) || { bytes: 0, storage: 0, compute: 0 };
      return el("tr", {}, el("td", {}, n.node), el("td", {}, n.url), el("td", {}, n.live ? "yes" : "no"),
        el("td", { class: "verified-bytes" }, fmtBytes(t.bytes)), el("td", {}, fmtBytes(t.storage)),
        el("td", {}, String(t.compute)),
        el("td", {}, String((rewards.totals || {})[n.node] || 0)),
        el("td", { class: "flags" }, (flags.get(n.node) || []).join(", ") || "–"));
    })));
  const perEpoch = new Map();
  for (const row of rewards.epochs) perEpoch.set(row.epoch, (perEpoch.get(row.epoch) || 0) + row.reward);
  const points = [...perEpoch.entries()].sort((a, b) => a[0] - b[0]).map(([epoch, reward]) => ({ epoch, reward }));
  $("network-chart").replaceChildren(points.length ? bars(points) : el("p", { class: "muted" }, "No closed epoch yet."));
}

function bars(points, width = 640, height = 140) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const max = Math.max(1, ...points.map((p) => p.reward));
  const w = width / points.length;
  points.forEach((p, i) => {
    const h = (p.reward / max) * (height - 20);
    const rect = document.createElementNS(svg.namespaceURI, "rect");
    Object.entries({ x: i * w + 2, y: height - 14 - h, width: Math.max(1, w - 4), height: h, fill: "#9fb4ff" })
      .forEach(([k, v]) => rect.setAttribute(k, v));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `epoch ${p.epoch}: ${p.reward}`;
    rect.append(title);
    svg.append(rect);
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", i * w + 4);
    label.setAttribute("y", height - 2);
    label.textContent = `#${p.epoch}: ${p.reward}`;
    svg.append(label);
  });
  return svg;
}

// ---- start ---------------------------------------------------------------------------

async function main() {
  const config = await fetch("config.json").then((r) => r.json()).catch(() => ({ api: "" }));
  if (config.api) {
    // Served by an edge: the studio (and your key) talk to the origin, not to the edge.
    location.replace(`${config.api.replace(/\/$/, "")}/studio/${location.hash}`);
    return;
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  if (state.key) {
    try {
      await signIn(state.key);
    } catch (error) {
      sessionStorage.removeItem(KEY_STORE);
      $("signin-error").textContent = error instanceof ApiError ? signInMessage(error) : error.message;
    }
  }
  show(location.hash.slice(1));
  document.body.dataset.ready = "1";
}

main();
