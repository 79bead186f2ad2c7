// meshcast player: hls.js for HLS (default), shaka-player for DASH (&format=dash), native
// HLS where there is no MSE (Safari on iOS). Shared by index.html and embed.html.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // /player/embed.html is this same page: a bare, full-window player for iframes.
  const embed = location.pathname.endsWith("/embed.html");
  document.body.classList.toggle("embed", embed);
  const vod = params.get("vod");
  const name = vod || params.get("stream") || "demo";
  const format = params.get("format") === "dash" ? "dash" : "hls";
  const base = `/${vod ? "vod" : "live"}/${encodeURIComponent(name)}`;
  // A playback token (token-protected streams): on the master URL; the server writes it
  // into every child URL of the manifests it serves. Tokens are short-lived: before this
  // one expires the player asks its host page for a new one ("tokenexpiring" event) and
  // the host hands it over (postMessage {source: "meshcast-host", type: "token", token},
  // the <meshcast-player token> attribute, or window.meshcastSetToken); from then on every
  // request, playlist reloads and segments included, carries the new token.
  let token = params.get("token");
  const plainSrc = params.get("src") || `${base}/${format === "dash" ? "manifest.mpd" : "master.m3u8"}`;
  const withToken = (url, always = false) => {
    if (!token) return url;
    const u = new URL(url, location.href);
    if (!always && !u.searchParams.has("token")) return url; // not a URL the edge rewrote
    u.searchParams.set("token", token);
    return u.href;
  };
  const srcUrl = () => (token ? withToken(plainSrc, true) : plainSrc);
  const video = $("video");
  if (vod) {
    // VOD assets have a poster and a WebVTT thumbnails track (thumbnails.jpg#xywh=...)
    // for seek-bar previews; the track is metadata, so it never renders as captions.
    video.poster = `${base}/poster.jpg`;
    const thumbs = document.createElement("track");
    Object.assign(thumbs, { kind: "metadata", label: "thumbnails", src: `${base}/thumbnails.vtt` });
    video.appendChild(thumbs);
  }
  const RETRY_MS = 3000;
  let engine = null;
  let retryTimer = null;

  // ---- host page events (embeds and the <meshcast-player> component) ----------------
  // Every event is also kept in window.meshcastEvents, for page scripts and tests.
  const events = (window.meshcastEvents = []);
  function post(type, detail = {}) {
    const message = { source: "meshcast", type, stream: name, ...detail };
    events.push(message);
    if (window.parent !== window) window.parent.postMessage(message, "*");
  }
  video.addEventListener("play", () => post("play"));
  video.addEventListener("pause", () => post("pause"));

  function showMessage(text) {
    $("message").textContent = text;
    $("message").classList.add("shown");
    $("message").classList.remove("purchase");
  }
  function hideMessage() { $("message").classList.remove("shown", "purchase"); }

  // 401/403 from the edge: the stream needs a (valid, in-scope, unexpired) token. Retrying
  // cannot help, so stop and say so, with the server's reason.
  let locked = false;
  function purchaseRequired(status, body) {
    locked = true;
    clearTimeout(retryTimer);
    if (engine) { engine.destroy(); engine = null; }
    const reason = (body && (body.reason || body.error)) || `HTTP ${status}`;
    const why = {
      token_required: "This stream is for paying viewers.",
      expired: "Your access has expired.",
      wrong_scope: "Your ticket is for another stream.",
    }[body && body.reason] || "Your ticket is not valid here.";
    $("message").textContent = "";
    const title = document.createElement("strong");
    title.textContent = "Purchase required";
    const detail = document.createElement("span");
    detail.textContent = `${why} (${reason})`;
    $("message").append(title, detail);
    $("message").classList.add("shown", "purchase");
    post("error", { detail: "purchase_required", status, reason });
    // A host that renews tokens can still hand one over: setToken then resumes.
    if (body && body.reason === "expired") post("tokenexpiring", { exp: claimsOf(token).exp || 0 });
  }

  // ---- token renewal --------------------------------------------------------------------
  function claimsOf(t) {
    try {
      const payload = t.split(".")[2].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4)));
    } catch (_) {
      return {};
    }
  }
  let renewTimer = null;
  function scheduleRenewal() {
    clearTimeout(renewTimer);
    const claims = token ? claimsOf(token) : {};
    if (!claims.exp) return;
    // Ask 30 s ahead, or half-way through a shorter token's life.
    const lead = Math.min(30, (claims.exp - (claims.iat || claims.exp - 60)) / 2);
    const wait = Math.max(0, (claims.exp - lead) * 1000 - Date.now());
    renewTimer = setTimeout(() => post("tokenexpiring", { exp: claims.exp }), wait);
  }
  function setToken(fresh) {
    if (typeof fresh !== "string" || !fresh || fresh === token) return;
    token = fresh;
    scheduleRenewal();
    post("tokenrenewed", { exp: claimsOf(token).exp || 0 });
    if (locked) {  // stopped on 401/403: try again with the new token
      locked = false;
      start();
    }
  }
  window.meshcastSetToken = setToken;
  addEventListener("message", (event) => {
    const data = event.data;
    if (event.source !== window.parent || !data || data.source !== "meshcast-host") return;
    if (data.type === "token") setToken(data.token);
  });
  scheduleRenewal();
  async function denied(res) {
    const body = await res.json().catch(() => null);
    purchaseRequired(res.status, body);
  }

  function loadScript(url) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = url; s.onload = resolve; s.onerror = () => reject(new Error(`cannot load ${url}`));
      document.head.appendChild(s);
    });
  }

  function retryLater(text) {
    if (locked) return;
    showMessage(text);
    if (engine) { engine.destroy(); engine = null; }
    clearTimeout(retryTimer);
    retryTimer = setTimeout(start, RETRY_MS);
  }

  // ---- engines: one small interface over hls.js and shaka -------------------------------
  async function hlsEngine() {
    await loadScript("vendor/hls.min.js");
    const hls = new window.Hls({
      liveSyncDurationCount: 3,
      enableWorker: true,
      // Playlist reloads and segments carry the newest token (URLs from manifests fetched
      // before a refresh still hold the old one).
      xhrSetup: (xhr, url) => {
        const fresh = withToken(url);
        if (fresh !== url) xhr.open("GET", fresh, true);
      },
    });
    hls.on(window.Hls.Events.MANIFEST_PARSED, () => { fillQualities(); video.play().catch(() => {}); });
    hls.on(window.Hls.Events.LEVEL_SWITCHED, (_, d) => {
      const level = hls.levels[d.level];
      post("qualitychange", { level: d.level, height: level && level.height });
    });
    hls.on(window.Hls.Events.SUBTITLE_TRACKS_UPDATED, (_, d) => setCaptions(d.subtitleTracks.length > 0));
    hls.on(window.Hls.Events.ERROR, (_, d) => {
      const code = d.response && d.response.code;
      if (code === 401 || code === 403) {
        // e.g. the token expired mid-play: the body is the edge's JSON reason.
        let body = null;
        try { body = JSON.parse(d.response.data || d.networkDetails.responseText); } catch (_) {}
        purchaseRequired(code, body);
        return;
      }
      if (!d.fatal) return;
      post("error", { detail: d.details });
      if (d.type === window.Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
      else retryLater("Stream unavailable — retrying…");
    });
    hls.loadSource(srcUrl());
    hls.attachMedia(video);
    return {
      name: "hls.js",
      levels: () => hls.levels.map((l, i) => ({ index: i, height: l.height, bitrate: l.bitrate })),
      current: () => hls.levels[hls.currentLevel] || null,
      select: (i) => { hls.currentLevel = i; },
      auto: () => hls.autoLevelEnabled,
      date: () => hls.playingDate,
      liveEdge: () => hls.liveSyncPosition,
      captions: (on) => { hls.subtitleDisplay = on; hls.subtitleTrack = on ? 0 : -1; },
      destroy: () => hls.destroy(),
    };
  }

  async function shakaEngine() {
    await loadScript("vendor/shaka-player.compiled.js");
    window.shaka.polyfill.installAll();
    const player = new window.shaka.Player();
    await player.attach(video);
    player.getNetworkingEngine().registerRequestFilter((_, request) => {
      request.uris = request.uris.map((u) => withToken(u));
    });
    player.addEventListener("error", (e) => {
      const status = e.detail && e.detail.code === 1001 ? e.detail.data[1] : 0;  // BAD_HTTP_STATUS
      if (status === 401 || status === 403) {
        let body = null;
        try { body = JSON.parse(e.detail.data[2]); } catch (_) {}
        purchaseRequired(status, body);
        return;
      }
      post("error", { detail: String(e.detail && e.detail.code) });
      retryLater("Stream unavailable — retrying…");
    });
    player.addEventListener("adaptation", () => {
      const t = player.getVariantTracks().find((v) => v.active);
      if (t) post("qualitychange", { height: t.height });
    });
    await player.load(srcUrl());
    fillQualities();
    setCaptions(player.getTextTracks().length > 0);
    const byHeight = () => {
      const seen = new Map();
      for (const t of player.getVariantTracks()) if (t.height && !seen.has(t.height)) seen.set(t.height, t);
      return [...seen.values()].sort((a, b) => b.height - a.height);
    };
    return {
      name: "shaka-player",
      levels: () => byHeight().map((t, i) => ({ index: i, height: t.height, bitrate: t.bandwidth })),
      current: () => {
        const t = player.getVariantTracks().find((v) => v.active);
        return t ? { height: t.height, bitrate: t.bandwidth } : null;
      },
      select: (i) => {
        player.configure({ abr: { enabled: i < 0 } });
        if (i >= 0) player.selectVariantTrack(byHeight()[i], /* clearBuffer */ true);
      },
      auto: () => player.getConfiguration().abr.enabled,
      date: () => player.getPlayheadTimeAsDate(),
      liveEdge: () => player.seekRange().end,
      captions: (on) => player.setTextTrackVisibility(on),
      destroy: () => player.destroy(),
    };
  }

  function nativeEngine() {
    video.src = srcUrl();
    return {
      name: "native", levels: () => [], current: () => null, select: () => {}, auto: () => true,
      date: () => (video.getStartDate ? new Date(video.getStartDate().getTime() + video.currentTime * 1000) : null),
      liveEdge: () => (video.seekable.length ? video.seekable.end(video.seekable.length - 1) : null),
      captions: () => {}, destroy: () => { video.removeAttribute("src"); video.load(); },
    };
  }

  // ---- UI -----------------------------------------------------------------------------
  function fillQualities() {
    if (engine) renderQualities();
  }
  function renderQualities() {
    const select = $("quality");
    select.length = 1;
    const levels = engine.levels().slice().sort((a, b) => b.height - a.height);
    for (const level of levels) {
      const option = document.createElement("option");
      option.value = String(level.index);
      option.textContent = `${level.height}p (${Math.round(level.bitrate / 1000)} kb/s)`;
      select.appendChild(option);
    }
  }
  $("quality").addEventListener("change", (e) => engine && engine.select(Number(e.target.value)));
  $("golive").addEventListener("click", () => {
    const edge = engine && engine.liveEdge();
    if (edge) video.currentTime = edge;
    video.play().catch(() => {});
  });
  function setCaptions(available) { $("captions-box").hidden = !available; }
  $("captions").addEventListener("change", (e) => engine && engine.captions(e.target.checked));

  function bufferAhead() {
    for (let i = 0; i < video.buffered.length; i++) {
      if (video.buffered.start(i) <= video.currentTime && video.currentTime <= video.buffered.end(i)) {
        return video.buffered.end(i) - video.currentTime;
      }
    }
    return 0;
  }

  setInterval(() => {
    if (!engine) return;
    const level = engine.current();
    const date = engine.date();
    const latency = date ? (Date.now() - date.getTime()) / 1000 : null;
    const edge = engine.liveEdge();
    const atEdge = edge != null && edge - video.currentTime < 8;
    $("live").classList.toggle("at-edge", !vod && atEdge);
    if ($("quality").length <= 1 && engine.levels().length) renderQualities();
    $("stats").textContent = [
      `engine   ${engine.name}${engine.auto() ? " (auto)" : ""}`,
      `quality  ${level && level.height ? level.height + "p" : "-"}`,
      `bitrate  ${level && level.bitrate ? Math.round(level.bitrate / 1000) + " kb/s" : "-"}`,
      `buffer   ${bufferAhead().toFixed(1)} s`,
      `latency  ${latency != null ? latency.toFixed(1) + " s" : "-"}`,
    ].join("\n");
  }, 500);

  video.addEventListener("ended", () => {
    showMessage(vod ? "Playback ended" : "Stream ended — waiting for it to come back…");
    post("ended");
    if (!vod) waitForNewPublication();
  });
  video.addEventListener("playing", hideMessage);

  async function waitForNewPublication() {
    // A new publication rewrites the playlist without #EXT-X-ENDLIST (or a dynamic MPD).
    const res = await fetch(srcUrl(), { cache: "no-store" }).catch(() => null);
    if (res && (res.status === 401 || res.status === 403)) return denied(res);
    const text = res && res.ok ? await res.text() : "";
    if (text && !text.includes("#EXT-X-ENDLIST") && !text.includes('type="static"')) start();
    else retryTimer = setTimeout(waitForNewPublication, RETRY_MS);
  }

  async function start() {
    clearTimeout(retryTimer);
    const res = await fetch(srcUrl(), { cache: "no-store" }).catch(() => null);
    if (res && (res.status === 401 || res.status === 403)) {
      await denied(res);
      return;
    }
    if (!res || !res.ok) {
      const offline = res && res.status === 404;
      retryLater(offline ? `“${name}” is offline — retrying…` : "Cannot reach the server — retrying…");
      post("error", { detail: offline ? "offline" : "unreachable" });
      return;
    }
    hideMessage();
    try {
      if (format === "dash") engine = await shakaEngine();
      else if (window.MediaSource || window.ManagedMediaSource) engine = await hlsEngine();
      else engine = nativeEngine();
      renderQualities();
      $("format").textContent = format.toUpperCase();
    } catch (err) {
      post("error", { detail: String(err) });
      retryLater("Playback failed — retrying…");
    }
  }

  // ---- contributor-network beacons ------------------------------------------------------
  // Played through an edge that joined a network (GET /api/network answers), a sampled
  // share of players tell the coordinator how many media bytes they got from that edge:
  // independent evidence for the edge's signed usage receipts (origin/coordinator.py).
  // Bytes come from Resource Timing, so hls.js, shaka and native playback count alike;
  // answers from the browser cache (transferSize 0) never left the edge and do not count.
  // `&beacons=0` turns them off, `&coordinator=URL` overrides the edge's coordinator.
  const beacons = (window.meshcastBeacons = { sampled: false, sent: 0, bytes: 0, flush: () => null });
  async function startBeacons() {
    if (params.get("beacons") === "0") return;
    let coordinator = params.get("coordinator");
    if (!coordinator) {
      const res = await fetch("/api/network", { cache: "no-store" }).catch(() => null);
      if (!res || !res.ok) return; // not an edge of a network (e.g. the origin itself)
      coordinator = (await res.json()).coordinator;
    }
    coordinator = coordinator.replace(/\/$/, "");
    const info = await fetch(`${coordinator}/api/coordinator`).then((r) => r.json()).catch(() => null);
    const rate = info && info.params ? Number(info.params.beacon_sample_rate) : 0;
    if (!(Math.random() < rate)) return;
    beacons.sampled = true;
    const viewer = Math.random().toString(36).slice(2, 14);
    const media = new RegExp(`^/(live|vod)/${name.replace(/[.]/g, "\\.")}/`);
    const pending = new Map(); // edge origin -> bytes not yet reported
    const count = (entries) => {
      for (const entry of entries) {
        const url = new URL(entry.name);
        if (!media.test(url.pathname) || !entry.transferSize) continue;
        pending.set(url.origin, (pending.get(url.origin) || 0) + entry.encodedBodySize);
      }
    };
    const observer = new PerformanceObserver((list) => count(list.getEntries()));
    observer.observe({ type: "resource", buffered: true });
    let since = Date.now() / 1000;
    beacons.flush = (useBeacon = false) => {
      count(observer.takeRecords()); // entries not yet delivered to the callback
      const now = Date.now() / 1000;
      for (const [edge, bytes] of pending) {
        if (!bytes) continue;
        // text/plain: a "simple" cross-origin request, no preflight
        const body = JSON.stringify({ edge, stream: `${vod ? "vod" : "live"}/${name}`, bytes,
                                      period: [since, now], viewer });
        if (useBeacon && navigator.sendBeacon) navigator.sendBeacon(`${coordinator}/api/beacons`, body);
        else fetch(`${coordinator}/api/beacons`, { method: "POST", body, keepalive: true }).catch(() => {});
        beacons.sent += 1;
        beacons.bytes += bytes;
      }
      pending.clear();
      since = now;
      return beacons.bytes;
    };
    setInterval(() => beacons.flush(), 10_000);
    addEventListener("pagehide", () => beacons.flush(true));
  }

  const page = location.origin + location.pathname.replace(/[^/]*$/, "");
  const query = vod ? `vod=${encodeURIComponent(vod)}` : `stream=${encodeURIComponent(name)}`;
  $("title").textContent = `meshcast — ${name}`;
  $("snippet").textContent =
    `<iframe src="${page}embed.html?${query}" width="960" height="540" allow="autoplay; fullscreen" allowfullscreen></iframe>\n\n` +
    `<script src="${page}meshcast-player.js"></script>\n<meshcast-player ${vod ? "vod" : "stream"}="${name}"></meshcast-player>`;
  if (embed) document.title = `${name} — meshcast`;
  start();
  startBeacons();
})();
