// Browser WHIP publisher (RFC 9725): camera + microphone -> POST /whip/NAME -> DELETE on stop.
// Query: ?stream=NAME&key=KEY[&autostart=1][&codec=VP8|H264][&server=https://origin]
// Non-trickle: we wait for ICE gathering to finish so one POST carries every candidate
// (the origin answers PATCH with 405). State for humans in #status, for tests in
// window.meshcastPublish.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const server = (params.get("server") || location.origin).replace(/\/$/, "");
  const state = (window.meshcastPublish = { state: "idle", error: null, location: null, codec: null });
  let pc = null;
  let media = null;

  $("stream").value = params.get("stream") || "";
  $("key").value = params.get("key") || "";

  function endpoint() {
    return `${server}/whip/${encodeURIComponent($("stream").value.trim())}`;
  }

  function show() {
    $("endpoint").textContent = endpoint();
    const watch = `${server}/player/?stream=${encodeURIComponent($("stream").value.trim())}`;
    $("watch").href = watch;
    $("watch").textContent = watch;
  }

  function setState(next, error) {
    state.state = next;
    state.error = error || null;
    $("status").dataset.state = next;
    $("status").textContent = error ? `${next}: ${error}` : next;
    $("start").disabled = next === "connecting" || next === "live";
    $("stop").disabled = !(next === "connecting" || next === "live");
  }

  // ICE servers the origin advertises (Link: <stun:...>; rel="ice-server").
  async function iceServers() {
    try {
      const resp = await fetch(endpoint(), { method: "OPTIONS" });
      const links = resp.headers.get("Link") || "";
      return [...links.matchAll(/<([^>]+)>\s*;\s*rel="?ice-server"?/g)].map((m) => ({ urls: m[1] }));
    } catch {
      return [];
    }
  }

  function gathered(peer, timeoutMs) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (peer.iceGatheringState === "complete") resolve();
      };
      peer.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, timeoutMs); // publish with what we have
    });
  }

  function preferCodec(transceiver, name) {
    if (!name || !RTCRtpSender.getCapabilities) return;
    const codecs = RTCRtpSender.getCapabilities("video").codecs;
    const preferred = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${name.toLowerCase()}`);
    if (preferred.length) transceiver.setCodecPreferences(preferred);
  }

  async function start() {
    setState("connecting");
    try {
      media = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
        audio: true,
      });
      $("preview").srcObject = media;
      pc = new RTCPeerConnection({ iceServers: await iceServers() });
      for (const track of media.getTracks()) {
        const t = pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
        if (track.kind === "video") preferCodec(t, params.get("codec"));
      }
      pc.addEventListener("connectionstatechange", () => {
        if (pc === null) return;
        if (pc.connectionState === "connected") setState("live");
        if (pc.connectionState === "failed") setState("error", "connection failed");
      });
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 3000);
      const resp = await fetch(endpoint(), {
        method: "POST",
        headers: { Authorization: `Bearer ${$("key").value.trim()}`, "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      if (resp.status !== 201) {
        const body = await resp.json().catch(() => ({}));
        throw new Error(`${resp.status} ${body.error || resp.statusText}`);
      }
      state.location = new URL(resp.headers.get("Location"), endpoint()).href;
      const answer = await resp.text();
      const m = /a=rtpmap:\d+ (H264|VP8)\//i.exec(answer.slice(answer.indexOf("m=video")));
      state.codec = m ? m[1] : null;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (err) {
      teardown();
      setState("error", String(err.message || err));
    }
  }

  function teardown() {
    if (pc) pc.close();
    pc = null;
    if (media) media.getTracks().forEach((t) => t.stop());
    media = null;
  }

  async function stop() {
    const resource = state.location;
    state.location = null;
    // DELETE before closing the connection, so the origin logs a clean end, not a drop.
    if (resource) {
      try {
        await fetch(resource, { method: "DELETE" });
      } catch {
        // the origin ends the session on its own when the connection closes
      }
    }
    teardown();
    setState("ended");
  }

  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  $("stop").addEventListener("click", stop);
  $("stream").addEventListener("input", show);
  window.addEventListener("pagehide", () => {
    if (state.location) fetch(state.location, { method: "DELETE", keepalive: true });
  });
  show();
  if (params.get("autostart") === "1") start();
})();
