// Live refresh: a page whose <main> has data-refresh="N" re-fetches itself every N seconds and swaps in the new
// <main>. The HTML comes from this server, already escaped; DOMParser never runs scripts in what it parses.
"use strict";
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const every = Math.max(1, Number(main.dataset.refresh) || 2) * 1000;
  async function refresh() {
    try {
      const answer = await fetch(location.href, { cache: "no-store", signal: AbortSignal.timeout(every * 2) });
      if (answer.ok) {
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").querySelector("main");
        const current = document.querySelector("main");
        if (fresh && current) current.replaceWith(fresh);
        if (fresh && !fresh.dataset.refresh) return; // the run ended: nothing more will change here
      }
    } catch (err) {
      // the daemon restarting, a timeout: try again on the next tick
    }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
