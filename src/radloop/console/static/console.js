// radloop console: live updates by polling with ETags, and the action buttons. No build step.
"use strict";
(() => {
  const POLL_MS = 3000;
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  let etag = null;
  let busy = false;

  function say(text, isError) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = isError ? "error" : "ok";
  }

  async function refresh() {
    if (!live || busy || document.hidden) return;
    busy = true;
    try {
      const headers = { "X-Console-Live": "1" };
      if (etag) headers["If-None-Match"] = etag;
      const answer = await fetch(location.href, { headers, credentials: "same-origin", cache: "no-store" });
      if (answer.redirected) {
        location.href = answer.url;  // the session ended: the sign-in page
      } else if (answer.status === 200) {
        etag = answer.headers.get("ETag");
        const open = new Set([...live.querySelectorAll("details[open]")].map((d) => d.textContent.slice(0, 80)));
        live.innerHTML = await answer.text();
        live.querySelectorAll("details").forEach((d) => { if (open.has(d.textContent.slice(0, 80))) d.open = true; });
        document.body.dataset.refreshed = String(Date.now());
      }
    } catch (err) {
      say("cannot reach radloop: " + err, true);
    } finally {
      busy = false;
    }
  }

  async function act(button) {
    const url = button.dataset.action;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const answer = await fetch(url, {
        method: "POST",
        headers: { "X-Radloop-Console": "1" },
        credentials: "same-origin",
      });
      if (!answer.ok) {
        let detail = answer.statusText;
        try { detail = (await answer.json()).detail || detail; } catch (_) { /* not JSON */ }
        say(`${button.textContent}: ${detail}`, true);
        return;
      }
      if (button.dataset.then) { location.href = button.dataset.then; return; }
      say(`${button.textContent}: done`, false);
      etag = null;
      await refresh();
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); }
  });
  if (live) {
    etag = null;
    setInterval(refresh, POLL_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }
})();
