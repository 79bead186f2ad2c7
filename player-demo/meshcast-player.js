// <meshcast-player stream="NAME"> (or vod="ASSET", or src="…/master.m3u8", format="dash"):
// a dependency-free web component for dApps. It embeds meshcast's embed page in an iframe
// and re-dispatches the player's events (play, pause, qualitychange, error, ended) as DOM
// CustomEvents on the element, with the message in `event.detail`.
// Token-protected streams: token="…"; on "tokenexpiring" set a fresh one (the attribute or
// element.setToken(t)): it reaches the playing iframe without reloading it.
(() => {
  "use strict";
  const script = document.currentScript;
  const base = new URL(".", script ? script.src : location.href);

  class MeshcastPlayer extends HTMLElement {
    static get observedAttributes() { return ["stream", "vod", "src", "format", "token"]; }

    constructor() {
      super();
      this._frame = document.createElement("iframe");
      this._frame.setAttribute("allow", "autoplay; fullscreen");
      this._frame.setAttribute("allowfullscreen", "");
      this._frame.style.cssText = "border:0;width:100%;height:100%;display:block";
      this._onMessage = (event) => {
        const data = event.data;
        if (event.source !== this._frame.contentWindow || !data || data.source !== "meshcast") return;
        this.dispatchEvent(new CustomEvent(data.type, { detail: data }));
      };
    }

    connectedCallback() {
      if (!this.style.display) this.style.display = "block";
      if (!this.style.aspectRatio) this.style.aspectRatio = "16 / 9";
      window.addEventListener("message", this._onMessage);
      this.appendChild(this._frame);
      this._update();
    }

    disconnectedCallback() { window.removeEventListener("message", this._onMessage); }

    attributeChangedCallback(name, old, value) {
      if (!this.isConnected) return;
      if (name === "token" && this._frame.src && value) {
        this._postToken(value);  // a renewal: the player keeps playing
        return;
      }
      this._update();
    }

    setToken(token) { this.setAttribute("token", token); }

    _postToken(token) {
      const message = { source: "meshcast-host", type: "token", token };
      if (this._frame.contentWindow) this._frame.contentWindow.postMessage(message, base.origin);
    }

    _update() {
      const url = new URL("embed.html", base);
      for (const name of MeshcastPlayer.observedAttributes) {
        const value = this.getAttribute(name);
        if (value) url.searchParams.set(name, value);
      }
      if (this._frame.src !== url.href) this._frame.src = url.href;
    }
  }

  if (!customElements.get("meshcast-player")) customElements.define("meshcast-player", MeshcastPlayer);
})();
