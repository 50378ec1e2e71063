// Tandem's dashboard: fetches GET /v1/admin/dashboard with the
// read or admin key every REFRESH_MS and draws the cluster, two SVG charts, the alerts
// and the services. No framework, no external resource; every value from the server
// reaches the page through textContent or an SVG attribute, never as HTML.
"use strict";
(function () {
  const KEY_STORE = "tandem.dashboard.key";
  const REFRESH_MS = 3000;
  const HOUR_MS = 3600 * 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2454c5", "#c2410c", "#15803d", "#7e22ce", "#0e7490", "#a16207", "#be123c", "#4d7c0f", "#334155"];
  const $ = (id) => document.getElementById(id);
  let timer = null;

  // --- the key -------------------------------------------------------------------
  function takeKeyFromFragment() {
    const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    if (!match) return;
    let key = match[1];
    try { key = decodeURIComponent(key); } catch (_) { /* keep it as written */ }
    if (key) sessionStorage.setItem(KEY_STORE, key);
    // The key leaves the address bar and the history entry.
    history.replaceState(null, "", location.pathname + location.search);
  }
  const currentKey = () => sessionStorage.getItem(KEY_STORE);

  function askForKey(message) {
    clearTimeout(timer);
    $("auth").hidden = false;
    $("main").hidden = true;
    $("forget").hidden = true;
    $("auth-message").textContent = message || "";
    $("summary").textContent = "not connected";
  }

  async function refused(response) {
    let detail = "";
    try { detail = (await response.json()).message || ""; } catch (_) { /* not JSON */ }
    if (response.status === 401) {
      return "The key was refused (401 unauthorized" + (detail ? ": " + detail : "") +
        "). Enter a read or admin key.";
    }
    return "This key may not read the dashboard (403 forbidden" + (detail ? ": " + detail : "") +
      "). Write keys only send events: use a read or admin key.";
  }

  // --- fetching ------------------------------------------------------------------
  function get(path, key) {
    return fetch(path, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    const key = currentKey();
    if (!key) { askForKey("Enter a read or admin key to see the cluster."); return; }
    let response;
    try {
      response = await get("/v1/admin/dashboard", key);
    } catch (error) {
      $("status").textContent = "This node did not answer (" + error.message + "); retrying.";
      schedule();
      return;
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY_STORE);
      askForKey(await refused(response));
      return;
    }
    if (!response.ok) {
      $("status").textContent = "The dashboard request failed with " + response.status + "; retrying.";
      schedule();
      return;
    }
    let doc;
    try { doc = await response.json(); } catch (error) {
      $("status").textContent = "Unreadable answer: " + error.message;
      schedule();
      return;
    }
    $("auth").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    $("status").textContent = "";
    render(doc);
    renderAlerts(doc);
    schedule();
  }

  // --- rendering -----------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const fmt = (n, digits) => (n === null || n === undefined) ? "–" :
    Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });

  function render(doc) {
    $("summary").textContent = doc.reachable + " of " + doc.members + " nodes reachable";
    $("updated").textContent = "updated " + new Date(doc.generated_at_ms).toLocaleTimeString() +
      " by node " + doc.node;
    $("leader").textContent = doc.leader === null ? "none" : "node " + doc.leader;
    $("leader").dataset.leader = doc.leader === null ? "" : String(doc.leader);
    $("term").textContent = fmt(doc.term);
    $("reachable").textContent = doc.reachable + "/" + doc.members + " reachable";
    $("events").textContent = fmt(doc.events_stored) + " events stored";
    renderRegions(doc.regions);
    const ingest = doc.ingest.map((p) => [p.at_ms, p.events_per_sec]);
    chart($("chart-ingest"), doc.generated_at_ms, [{ name: "events/s", color: COLORS[0], points: ingest }]);
    const latency = doc.latency.map((s, i) => ({
      name: "node " + s.node,
      color: COLORS[i % COLORS.length],
      points: s.points.filter((p) => p.p99_ms !== null).map((p) => [p.at_ms, p.p99_ms]),
    }));
    chart($("chart-latency"), doc.generated_at_ms, latency);
    legend($("latency-legend"), latency);
    renderServices(doc.services);
    renderBackups(doc.backups);
  }

  // The newest backup and the last verification by restore (DR drills stay a placeholder).
  function renderBackups(b) {
    const box = document.querySelector('[data-testid="backups"]');
    if (!box || !b || !b.configured) return;
    const now = Date.now();
    const ago = (ms) => {
      const s = Math.max(0, (now - ms) / 1000);
      return s < 120 ? fmt(s) + " s ago" : s < 7200 ? fmt(s / 60) + " min ago" :
        s < 172800 ? fmt(s / 3600, 1) + " h ago" : fmt(s / 86400, 1) + " days ago";
    };
    const mb = (bytes) => fmt(bytes / 1048576, 1) + " MB";
    const repo = b.repository || {};
    const rows = [el("h2", {}, "Backups")];
    const newest = repo.newest;
    rows.push(el("p", { "data-testid": "backups-last", "data-id": newest ? newest.id : "" }, newest
      ? "last backup " + newest.id + " · " + ago(repo.newest_finished_ms) + " · " + mb(newest.bytes_scanned) +
        " (" + mb(newest.bytes_uploaded) + " uploaded) · " + fmt(repo.backups) + " kept"
      : (b.repository ? "no backup yet" : "repository not read yet")));
    const v = repo.verify_last;
    const verify = el("p", { "data-testid": "backups-verify", "data-result": v ? (v.ok ? "ok" : "failed") : "none" },
      v ? "last verification " + (v.ok ? "passed" : "FAILED: " + (v.error || "")) + " · backup " + (v.backup || "–") +
        " · " + ago(v.finished_ms) + " · took " + fmt((v.finished_ms - v.started_ms) / 1000, 1) + " s"
        : (b.verify_schedule ? "no verification yet (schedule " + b.verify_schedule + ")" : "scheduled verification off"));
    rows.push(verify);
    if (b.running || b.verifying) {
      rows.push(el("p", {}, (b.running ? "a backup" : "a verification") + " is running on this node"));
    }
    box.classList.remove("placeholder");
    box.replaceChildren(...rows);
  }

  function renderRegions(regions) {
    const box = $("regions");
    box.replaceChildren();
    for (const region of regions) {
      const card = el("div", { class: "region", "data-testid": "region-" + region.region });
      card.append(el("h3", {}, "region " + region.region));
      for (const n of region.nodes) card.append(nodeCard(n));
      box.append(card);
    }
  }

  function nodeCard(n) {
    const card = el("div", {
      class: "node",
      "data-testid": "node-" + n.id,
      "data-node-id": String(n.id),
      "data-health": n.reachable ? "reachable" : "unreachable",
      "data-leader": n.is_leader ? "true" : "false",
      "data-state": n.state || "unknown",
    });
    const title = el("div", { class: "title" }, "node " + n.id);
    const badge = n.reachable ? (n.is_leader ? "leader" : (n.state || "").toLowerCase()) : "unreachable";
    title.append(el("span", { class: "badge", "data-testid": "node-" + n.id + "-badge" }, badge));
    card.append(title);
    card.append(el("div", { class: "detail" }, n.role + " · " + n.url));
    if (n.reachable) {
      let line = "applied " + fmt(n.applied_index) + " · term " + fmt(n.term);
      if (n.replication_lag_entries !== null) line += " · lag " + fmt(n.replication_lag_entries) + " entries";
      if (n.heartbeat_age_ms !== null) line += " · ack " + fmt(n.heartbeat_age_ms) + " ms ago";
      card.append(el("div", { class: "detail" }, line));
    } else {
      card.append(el("div", { class: "detail" }, "unreachable: " + (n.error || "no answer")));
      if (n.heartbeat_age_ms !== null) {
        card.append(el("div", { class: "detail" }, "last ack " + fmt(n.heartbeat_age_ms / 1000, 1) + " s ago"));
      }
    }
    return card;
  }

  function renderServices(services) {
    const table = $("services");
    table.replaceChildren();
    const head = el("tr");
    for (const h of ["service", "status", "per node"]) head.append(el("th", {}, h));
    table.append(head);
    for (const s of services) {
      const row = el("tr", { "data-testid": "service-" + s.name });
      row.append(el("td", {}, s.name));
      row.append(el("td", { class: s.status }, s.status));
      const nodes = s.nodes.map((n) => "node " + n.node + ": " + n.status +
        (n.reason ? " (" + n.reason + ")" : "") + ", lag " + fmt(n.lag) + ", restarts " + fmt(n.restarts));
      row.append(el("td", {}, nodes.join(" · ")));
      table.append(row);
    }
  }

  // Every reachable node's pending and firing alerts, gathered into the document by the
  // node that answered (cluster-scoped ones come from the leader).
  function renderAlerts(doc) {
    const box = $("alerts");
    if (!Array.isArray(doc.alerts)) {
      box.replaceChildren(el("p", { class: "unavailable", "data-testid": "alerts-unavailable" },
        "alerts: not available from this node"));
      return;
    }
    const alerts = doc.alerts.slice();
    const order = { firing: 0, pending: 1 };
    alerts.sort((a, b) => (order[a.state] ?? 2) - (order[b.state] ?? 2));
    if (alerts.length === 0) {
      box.replaceChildren(el("p", { class: "none", "data-testid": "alerts-none" }, "no alerts firing or pending"));
      return;
    }
    box.replaceChildren(...alerts.map(alertCard));
  }

  function alertCard(a) {
    const notes = a.annotations || {};
    const card = el("div", { class: "alert", "data-state": String(a.state), "data-testid": "alert" });
    const title = el("div", { class: "title" });
    title.append(el("strong", {}, String(a.name)));
    title.append(document.createTextNode(" · " + a.state + " · " + (a.severity || "") + " · " + (a.scope || "") +
      (a.reported_by !== undefined ? " · reported by node " + a.reported_by : "")));
    card.append(title);
    if (notes.summary) card.append(el("div", {}, String(notes.summary)));
    const labels = Object.entries(a.labels || {}).map(([k, v]) => k + "=" + v).join(", ");
    const since = a.fired_at || a.active_since;
    let line = since ? "since " + new Date(since).toLocaleString() : "";
    if (a.value !== undefined && a.value !== null) line += " · value " + a.value;
    if (labels) line += " · " + labels;
    if (line) card.append(el("div", { class: "detail" }, line));
    if (notes.runbook) card.append(el("div", { class: "detail" }, "runbook: " + notes.runbook));
    return card;
  }

  // --- charts --------------------------------------------------------------------
  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  // Draws `series` ([{name, color, points: [[ms, value]]}]) over the hour ending at `now`.
  function chart(svg, now, series) {
    const W = 640, H = 180, left = 48, right = 8, top = 10, bottom = 24;
    const start = now - HOUR_MS;
    svg.replaceChildren();
    const values = series.flatMap((s) => s.points.map((p) => p[1]));
    const max = niceMax(Math.max(0, ...values));
    const x = (t) => left + (W - left - right) * Math.min(1, Math.max(0, (t - start) / HOUR_MS));
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      svg.append(svgEl("line", { class: "axis", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      svg.append(svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 2)));
    }
    for (const minutes of [60, 45, 30, 15, 0]) {
      const t = now - minutes * 60000;
      svg.append(svgEl("text", { x: x(t), y: H - 6, "text-anchor": minutes ? "middle" : "end" },
        minutes ? "-" + minutes + " min" : "now"));
    }
    let drawn = 0;
    for (const s of series) {
      const points = s.points.filter((p) => p[0] >= start);
      if (points.length === 0) continue;
      drawn += points.length;
      const path = points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
      svg.append(svgEl("polyline", { points: path, fill: "none", stroke: s.color, "stroke-width": 2 }));
      const last = points[points.length - 1];
      svg.append(svgEl("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, fill: s.color }));
    }
    svg.dataset.points = String(drawn);
    if (drawn === 0) {
      svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" },
        "collecting samples (one every 10 s)"));
    }
  }

  function legend(box, series) {
    box.replaceChildren();
    for (const s of series) {
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = s.color;
      item.append(swatch, document.createTextNode(s.name));
      box.append(item);
    }
  }

  // --- start ---------------------------------------------------------------------
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    $("key-input").value = "";
    if (!key) { askForKey("Enter a read or admin key."); return; }
    sessionStorage.setItem(KEY_STORE, key);
    $("auth-message").textContent = "";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    askForKey("Key forgotten.");
  });
  window.addEventListener("hashchange", () => { takeKeyFromFragment(); refresh(); });
  takeKeyFromFragment();
  refresh();
})();
