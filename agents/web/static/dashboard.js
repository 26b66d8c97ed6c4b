// Laneway dashboard: polls GET /api/stats with the admin token and renders every tenant.
// The token lives in sessionStorage only (gone with the tab) and travels as a Bearer header;
// it never goes into a URL. Rows are rebuilt with one innerHTML assignment per refresh, and
// sparklines are inline SVG strings, so 1,000 tenants render in one pass.
"use strict";

(() => {
  const TOKEN_KEY = "laneway.adminToken";
  const REFRESH_MS = 2000;
  const SPARK_WIDTH = 120;
  const SPARK_HEIGHT = 22;
  const SPARK_POINTS = 60; // the server keeps 5 minutes of points, one every 5 s
  const ASCENDING_BY_DEFAULT = new Set(["tenant", "lane"]);

  const $ = (id) => document.getElementById(id);
  const view = { sort: "rate_1m", order: "desc", lane: "", flag: "", q: "" };
  let timer = null;
  let inFlight = null;
  let firstRenderMarked = false;

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (value) => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  // One formatter for every number: toLocaleString builds one per call, 10x slower.
  const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const count = (n) => (n === null || n === undefined ? "–" : grouped.format(n));
  const rate = (r) => (r >= 100 ? grouped.format(r) : r.toFixed(1));

  function ago(iso, now) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function sparkline(points) {
    const box = `viewBox="0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}" preserveAspectRatio="none"`;
    if (points.length < 2) {
      const y = SPARK_HEIGHT - 1;
      return `<svg class="spark" ${box}><line x1="0" y1="${y}" x2="${SPARK_WIDTH}" y2="${y}"/></svg>`;
    }
    const top = Math.max(...points) || 1;
    const step = SPARK_WIDTH / (SPARK_POINTS - 1);
    const first = SPARK_POINTS - points.length; // right-aligned: the newest point is "now"
    let coords = "";
    for (let i = 0; i < points.length; i++) {
      const x = (first + i) * step;
      const y = SPARK_HEIGHT - 1 - (points[i] / top) * (SPARK_HEIGHT - 3);
      coords += `${Math.round(x)},${Math.round(y)} `; // whole pixels: shorter, as sharp
    }
    return `<svg class="spark" ${box}><polyline points="${coords}"/></svg>`;
  }

  function laneBadge(tenant) {
    if (tenant.lane === "shared") return '<span class="badge lane-shared">shared</span>';
    return `<span class="badge lane-dedicated">dedicated ${tenant.lane_index}</span>`;
  }

  function rowHtml(t, now) {
    const flags = t.flags.map((f) => `<span class="badge flag-${f}">${f}</span>`).join("");
    // A shared-lane tenant's backlog is the whole shared lane's: it is shown once, at the top.
    const backlog = t.lane === "shared" ? "" : count(t.backlog.messages);
    return (
      `<tr data-tenant="${escapeHtml(t.tenant)}">` +
      `<td class="tenant"><span class="id">${escapeHtml(t.tenant)}</span>` +
      `<span class="name">${escapeHtml(t.name)}</span></td>` +
      `<td data-field="lane">${laneBadge(t)}</td>` +
      `<td data-field="flags">${flags}</td>` +
      `<td class="num" data-field="rate_10s">${rate(t.rates.rate_10s)}</td>` +
      `<td class="num" data-field="rate_1m">${rate(t.rates.rate_1m)}</td>` +
      `<td class="spark-col">${sparkline(t.sparkline)}</td>` +
      `<td class="num" data-field="received">${count(t.received)}</td>` +
      `<td class="num" data-field="processed">${count(t.processed)}</td>` +
      `<td class="num${t.dlq ? " bad" : ""}" data-field="dlq">${count(t.dlq)}</td>` +
      `<td class="num wide" data-field="backlog">${backlog}</td>` +
      `<td class="wide" data-field="last_message_at">${ago(t.last_message_at, now)}</td>` +
      "</tr>"
    );
  }

  function renderTotals(totals) {
    const lanes = Object.values(totals.backlog.dedicated_lanes);
    const dedicatedBacklog = lanes.length ? lanes.reduce((a, b) => a + b, 0) : null;
    const cards = [
      ["tenants", "Tenants", count(totals.tenants)],
      ["dedicated", "In dedicated lanes", count(totals.dedicated)],
      ["rate_10s", "msg/s (10 s)", rate(totals.rate_10s)],
      ["rate_1m", "msg/s (1 min)", rate(totals.rate_1m)],
      ["received", "Received", count(totals.received)],
      ["processed", "Processed", count(totals.processed)],
      ["dlq", "DLQ", count(totals.dlq)],
      ["shared_backlog", "Shared backlog", count(totals.backlog.shared_lane)],
      ["dedicated_backlog", "Dedicated backlog", count(dedicatedBacklog)],
      ["lane_moves", "Lane moves", count(totals.lane_moves)],
      ["noisy", "Noisy", count(totals.flags.noisy)],
      ["paused", "Paused", count(totals.flags.paused)],
      ["silent", "Silent", count(totals.flags.silent)],
      ["erroring", "Erroring", count(totals.flags.erroring)],
    ];
    $("totals").innerHTML = cards
      .map(
        ([key, label, value]) =>
          `<div class="card card-${key}" data-total="${key}">` +
          `<span class="value">${value}</span><span class="label">${label}</span></div>`,
      )
      .join("");
  }

  function render(data) {
    const now = Date.parse(data.generated_at);
    renderTotals(data.totals);
    let html = "";
    for (const tenant of data.tenants) html += rowHtml(tenant, now);
    const body = $("rows");
    body.innerHTML = html;
    const shown = data.tenants.length;
    $("shown").textContent = `${count(shown)} of ${count(data.totals.tenants)} tenants`;
    document.body.dataset.rows = String(shown);
    if (!firstRenderMarked && shown === data.totals.tenants) {
      firstRenderMarked = true;
      body.getBoundingClientRect(); // style and layout now, not at some later frame
      // After the next paint: the moment an operator sees every row.
      requestAnimationFrame(() => setTimeout(() => performance.mark("laneway:first-render")));
    }
  }

  function setStatus(text, failing) {
    $("status").textContent = text;
    $("status").classList.toggle("failing", failing);
  }

  function showLogin(message) {
    clearTimeout(timer);
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("rows").innerHTML = "";
    setStatus("signed out", false);
    $("token").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
  }

  async function refresh() {
    clearTimeout(timer);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showLogin("");
      return;
    }
    const params = new URLSearchParams({ sort: view.sort, order: view.order });
    for (const key of ["lane", "flag", "q"]) if (view[key]) params.set(key, view[key]);
    if (inFlight) inFlight.abort(); // a newer question supersedes the one still out
    const request = new AbortController();
    inFlight = request;
    try {
      const response = await fetch(`/api/stats?${params}`, {
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
        credentials: "omit",
        signal: request.signal,
      });
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(response.status === 403 ? "That is not the admin token." : "Unknown token.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      showBoard();
      render(data);
      const time = new Date(data.generated_at).toLocaleTimeString();
      if (data.kafka.up) {
        setStatus(`live · ${time}`, false);
      } else {
        // Counts and backlogs stop moving while Kafka is away: say why instead of looking idle.
        const since = new Date(data.kafka.down_since).toLocaleTimeString();
        setStatus(`Kafka unreachable since ${since}: ingest refuses messages · ${time}`, true);
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      setStatus(`refresh failed (${error.message}), retrying`, true);
    } finally {
      if (inFlight === request) {
        inFlight = null;
        if (sessionStorage.getItem(TOKEN_KEY)) timer = setTimeout(refresh, REFRESH_MS);
      }
    }
  }

  function markSorted() {
    for (const th of document.querySelectorAll("th[data-sort]")) {
      const sorted = th.dataset.sort === view.sort;
      th.setAttribute("aria-sort", sorted ? (view.order === "asc" ? "ascending" : "descending") : "none");
    }
  }

  function wire() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      refresh();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("");
    });
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        if (view.sort === key) view.order = view.order === "asc" ? "desc" : "asc";
        else view.order = ASCENDING_BY_DEFAULT.has(key) ? "asc" : "desc";
        view.sort = key;
        markSorted();
        refresh();
      });
    }
    $("filter-lane").addEventListener("change", (event) => {
      view.lane = event.target.value;
      refresh();
    });
    $("filter-flag").addEventListener("change", (event) => {
      view.flag = event.target.value;
      refresh();
    });
    let typing = null;
    $("filter-text").addEventListener("input", (event) => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        view.q = event.target.value.trim();
        refresh();
      }, 200);
    });
    markSorted();
  }

  wire();
  refresh();
})();
