// tuneforge dashboard: plain JavaScript, no build step. Every call is the public API with the
// key the user typed, sent as `Authorization: Bearer`; the key lives in sessionStorage only
// (gone when the tab closes; no cookie another site could ride on).
"use strict";
(() => {
  const KEY_STORE = "tuneforge.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATUSES = ["validating_files", "queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled"];
  const CHARTS = [
    ["loss", "Training loss"], ["eval_loss", "Eval loss"], ["learning_rate", "Learning rate"],
    ["grad_norm", "Grad norm"], ["tokens_per_second", "Tokens / s"],
    // DPO jobs' series (shown only when the job has them)
    ["rewards_margin", "Reward margin (chosen - rejected)", true], ["reward_accuracy", "Reward accuracy (preferred ranked first)", true],
    ["rewards_chosen", "Reward, preferred", true], ["rewards_rejected", "Reward, non-preferred", true],
  ];
  const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000];
  const main = document.getElementById("main");
  let cleanup = [];  // what the current page must stop when another one opens

  // --- small helpers ------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
  const fmt = {
    date: (unix) => (unix ? dateFmt.format(new Date(unix * 1000)) : "—"),
    num(v) {
      if (v === null || v === undefined || v === "") return "—";
      if (typeof v !== "number") return String(v);
      if (Number.isInteger(v)) return v.toLocaleString();
      const a = Math.abs(v);
      return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toLocaleString(undefined, { maximumFractionDigits: 4 });
    },
    bytes(n) {
      if (n === null || n === undefined) return "—";
      const u = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
      return `${i ? n.toFixed(1) : n} ${u[i]}`;
    },
    ago(unix) {
      const s = Math.round(Date.now() / 1000 - unix);
      return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
    },
  };
  const badge = (status) => h("span", { class: `badge s-${status}`, dataset: { status } }, status.replace("_", " "));
  const shortModel = (m) => (m || "").split("/").filter(Boolean).slice(-1)[0] || m;
  function progress(step, total) {
    if (!total) return h("span", { class: "muted" }, step ? `step ${step}` : "—");
    const pct = Math.max(0, Math.min(100, (100 * (step || 0)) / total));
    return h("div", { class: "bar", title: `${step || 0} / ${total}` }, h("span", { style: `width:${pct}%` }), h("em", {}, `${step || 0} / ${total}`));
  }

  function yamlScalar(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    const s = String(v);
    const plain = /^[A-Za-z_./@+-][\w ./@+-]*$/.test(s) && !/^(true|false|null|yes|no|on|off|~)$/i.test(s) && !s.endsWith(" ");
    return plain ? s : JSON.stringify(s);
  }
  /** Block-style YAML of JSON data (the spec view); strings that need it are JSON-quoted, which YAML reads. */
  function toYaml(v, ind = "") {
    const empty = (x) => x && typeof x === "object" && !(Array.isArray(x) ? x.length : Object.keys(x).length);
    const leaf = (x) => (empty(x) ? (Array.isArray(x) ? "[]" : "{}") : yamlScalar(x));
    const nested = (x) => x && typeof x === "object" && !empty(x);
    const out = [];
    if (Array.isArray(v)) {
      for (const x of v) out.push(`${ind}- ` + (nested(x) ? toYaml(x, ind + "  ").slice(ind.length + 2) : leaf(x)));
    } else {
      for (const [k, x] of Object.entries(v)) out.push(nested(x) ? `${ind}${k}:\n${toYaml(x, ind + "  ")}` : `${ind}${k}: ${leaf(x)}`);
    }
    return out.join("\n");
  }

  /** Any JSON as readable HTML: objects as key/value lists, lists of objects as tables. It
   * renders report sections this page does not know yet (e.g. new evaluation fields) too. */
  function renderValue(v) {
    if (v === null || v === undefined) return h("span", { class: "muted" }, "—");
    if (Array.isArray(v)) {
      if (!v.length) return h("span", { class: "muted" }, "none");
      if (v.every((x) => x && typeof x === "object" && !Array.isArray(x))) {
        const cols = [...new Set(v.flatMap((x) => Object.keys(x)))];
        return h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
          h("tbody", {}, v.map((x) => h("tr", {}, cols.map((c) => h("td", {}, renderValue(x[c]))))))));
      }
      return v.map((x) => (typeof x === "object" ? renderValue(x) : fmt.num(x))).join(", ");
    }
    if (typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) return h("span", { class: "muted" }, "none");
      return h("dl", { class: "kv" }, keys.map((k) => [h("dt", {}, k), h("dd", {}, renderValue(v[k]))]));
    }
    return typeof v === "number" ? fmt.num(v) : String(v);
  }

  // --- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, param) { super(message); this.status = status; this.param = param; }
  }
  const apiKey = () => sessionStorage.getItem(KEY_STORE);
  // Relative to the page, so a dashboard served under a proxy prefix (/tuneforge/) calls /tuneforge/v1/...
  const rel = (path) => path.replace(/^\//, "");
  const etags = new Map();  // GET path -> {etag, body}: a poll the server answers 304 costs no body

  async function api(path, { method = "GET", json, form } = {}) {
    const headers = { Authorization: `Bearer ${apiKey()}` };
    let body;
    if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    if (form) body = form;
    const cached = method === "GET" ? etags.get(path) : undefined;
    if (cached) headers["If-None-Match"] = cached.etag;
    const res = await fetch(rel(path), { method, headers, body, cache: "no-store" });
    if (res.status === 304 && cached) return cached.body;
    if (res.status === 401) { signOut("Your API key was refused; sign in again."); throw new ApiError(401, "unauthorized"); }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const err = data && data.error;
      throw new ApiError(res.status, err ? err.message + (err.param ? ` (${err.param})` : "") : `HTTP ${res.status}: ${text.slice(0, 200)}`, err && err.param);
    }
    const etag = res.headers.get("ETag");
    if (method === "GET" && etag) etags.set(path, { etag, body: data });
    return data;
  }

  /** Server-sent events over fetch (EventSource cannot send an Authorization header). */
  async function streamEvents(path, onEvent, signal, lastId) {
    const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const res = await fetch(rel(path), { headers, signal, cache: "no-store" });
    if (!res.ok) throw new ApiError(res.status, `stream: HTTP ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return lastId;
      buf = (buf + value).replace(/\r\n/g, "\n");  // a lone trailing \r waits for its \n
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const at = line.indexOf(":");
          const field = at < 0 ? line : line.slice(0, at);
          let val = at < 0 ? "" : line.slice(at + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
          else if (field === "id") lastId = val;
        }
        if (data.length) {
          try { onEvent(event, JSON.parse(data.join("\n"))); } catch (e) { console.error(e); }
        }
      }
    }
  }

  /** Poll fn every `ms` while the page is open (skipped while the tab is hidden). */
  function every(ms, fn) {
    let timer, stopped = false;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) { try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.error(e); } }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
    cleanup.push(() => { stopped = true; clearTimeout(timer); });
  }

  const confirmDialog = document.getElementById("confirm");
  function confirmAction(text, okLabel) {
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = okLabel;
    confirmDialog.returnValue = "";
    confirmDialog.showModal();
    return new Promise((resolve) => confirmDialog.addEventListener("close", () => resolve(confirmDialog.returnValue === "ok"), { once: true }));
  }

  function showError(where, e) {
    where.replaceChildren(h("p", { class: "error", role: "alert" }, e.message || String(e)));
  }

  // --- sign in ------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    etags.clear();
    route(message);
  }
  document.getElementById("signout").addEventListener("click", () => signOut());

  function signInPage(message) {
    const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "sk-...", required: true });
    const status = h("p", { class: "error", role: "alert" }, message || "");
    const form = h("form", { class: "card signin", onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_STORE, input.value.trim());
      try {
        await api("/v1/fine_tuning/jobs?limit=1");
        if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
        else route();
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 401)) status.textContent = e.message;
      }
    } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste your team's API key. It stays in this tab only (session storage) and is sent to this server's API and nowhere else."),
    h("label", {}, "API key", input), h("p", {}), h("button", { class: "primary", type: "submit" }, "Sign in"), status);
    main.replaceChildren(form);
    input.focus();
  }

  // --- jobs ---------------------------------------------------------------------------

  function jobsPage() {
    const filter = h("select", { id: "status-filter", onchange: () => draw() },
      h("option", { value: "" }, "all statuses"), h("option", { value: "active" }, "not finished"),
      STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
    const body = h("tbody", {});
    const note = h("p", { class: "muted" });
    let jobs = [];
    const wanted = (j) => !filter.value || (filter.value === "active" ? !TERMINAL.has(j.status) : j.status === filter.value);
    function draw() {
      const shown = jobs.filter(wanted);
      body.replaceChildren(...shown.map((j) => {
        const loss = j.latest_metrics && (j.latest_metrics.loss ?? j.latest_metrics.eval_loss);
        const queue = j.queue_position ? `#${j.queue_position}${j.queue_reason ? ` — ${j.queue_reason}` : ""}` : (j.queue_reason || "");
        return h("tr", { class: "clickable", dataset: { job: j.id }, onclick: () => (location.hash = `#/jobs/${j.id}`) },
          h("td", {}, badge(j.status)), h("td", { class: "hide-sm" }, j.phase || ""),
          h("td", {}, progress(j.step, j.total_steps)),
          h("td", { class: "hide-sm" }, queue),
          h("td", { class: "hide-sm" }, j.estimated_start ? fmt.date(j.estimated_start) : ""),
          h("td", { class: "hide-sm" }, TERMINAL.has(j.status) ? fmt.date(j.finished_at) : j.estimated_finish ? fmt.date(j.estimated_finish) : ""),
          h("td", { title: j.model }, h("a", { href: `#/jobs/${j.id}` }, shortModel(j.model))),
          h("td", {}, j.suffix || ""), h("td", { class: "hide-sm" }, fmt.date(j.created_at)),
          h("td", {}, loss === undefined || loss === null ? "" : fmt.num(loss)));
      }));
      note.textContent = jobs.length ? `${shown.length} of ${jobs.length} jobs` : "No jobs yet — create one on the New job page.";
    }
    let pages = 1;  // pages of 100 kept live; "Show older jobs" adds one
    const more = h("button", { type: "button", id: "older", hidden: true, onclick: () => { pages++; load().catch((e) => showError(note, e)); } }, "Show older jobs");
    async function load() {
      const out = [];
      let after = null, hasMore = false;
      for (let page = 0; page < pages; page++) {
        const res = await api(`/v1/fine_tuning/jobs?limit=100${after ? `&after=${after}` : ""}`);
        out.push(...res.data);
        hasMore = res.has_more;
        if (!hasMore) break;
        after = res.last_id;
      }
      // Waiting jobs whose list entry carries no queue position get it from their own
      // object (at most 10 a poll); a server that stores positions on the list costs nothing here.
      const unplaced = out.filter((j) => j.status === "queued" && j.queue_position == null).slice(0, 10);
      await Promise.all(unplaced.map((j) => api(`/v1/fine_tuning/jobs/${j.id}`).then((full) => {
        j.queue_position = full.queue_position;
        j.queue_reason = full.queue_reason;
        j.estimated_start = full.estimated_start;
      }).catch(() => {})));
      jobs = out;
      more.hidden = !hasMore;
      draw();
    }
    main.replaceChildren(
      h("div", { class: "row" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }), h("label", {}, "Status", filter)),
      h("div", { class: "card scroll" }, h("table", { id: "jobs" },
        h("thead", {}, h("tr", {}, ["Status", ["Phase", 1], "Progress", ["Queue", 1], ["Est. start", 1], ["Finish", 1], "Model", "Suffix", ["Created", 1], "Loss"]
          .map((c) => (Array.isArray(c) ? h("th", { class: "hide-sm" }, c[0]) : h("th", {}, c))))), body), note, more));
    load().catch((e) => showError(note, e));
    every(2000, load);
  }

  // --- one job ------------------------------------------------------------------------

  function jobSpec(job) {
    const hp = { ...job.hyperparameters };
    delete hp.learning_rate_multiplier;
    const spec = {
      model: job.model, training_file: job.training_file, validation_file: job.validation_file, validation_split: job.validation_split,
      suffix: job.suffix, seed: job.seed, priority: job.priority, template: job.template, hyperparameters: hp, lora: job.lora,
      quantization: job.quantization, evaluation: job.evaluation, resources: job.resources, metadata: job.metadata,
    };
    for (const k of Object.keys(spec)) if (spec[k] === null || spec[k] === undefined) delete spec[k];
    return spec;
  }

  async function artifactJson(jobId, name) {
    const link = await api(`/v1/fine_tuning/jobs/${jobId}/artifacts/${name}`);
    const res = await fetch(link.url, { cache: "no-store" });
    if (!res.ok) throw new Error(`${name}: HTTP ${res.status}`);
    return res.json();
  }

  function makeCharts(container) {
    const charts = new Map();  // key -> {plot, box}
    const points = new Map();  // step -> values
    let zoom = null;  // [from, to] or null
    let syncing = false;
    const width = () => Math.max(200, (container.querySelector(".chart") || container).clientWidth - 18);
    for (const [key, title, optional] of CHARTS) {
      const box = h("div", { class: "chart", dataset: { metric: key, points: "0" }, hidden: !!optional }, h("h3", {}, title));
      box.optional = !!optional;
      container.append(box);
      const plot = new uPlot({
        width: 400, height: 180,
        scales: { x: { time: false } },
        axes: [{ label: "step", incrs: STEP_INCRS }, { size: 70, values: (u, ticks) => ticks.map((v) => fmt.num(v)) }],
        series: [{ label: "step" }, { label: title, stroke: key.startsWith("eval") ? "#c4321c" : "#2f6fdf", width: 2, points: { show: true, size: key.startsWith("eval") ? 7 : 4 }, spanGaps: true }],
        cursor: { drag: { x: true, y: false } },
        hooks: { setScale: [(u, k) => {
          if (k !== "x" || syncing) return;
          syncing = true;
          for (const other of charts.values()) if (other.plot !== u) other.plot.setScale("x", { min: u.scales.x.min, max: u.scales.x.max });
          syncing = false;
        }] },
      }, [[], []], box);
      charts.set(key, { plot, box });
    }
    function redraw() {
      const steps = [...points.keys()].sort((a, b) => a - b);
      for (const [key, { plot, box }] of charts) {
        const xs = [], ys = [];
        for (const s of steps) {
          const v = points.get(s)[key];
          if (typeof v === "number") { xs.push(s); ys.push(v); }
        }
        box.dataset.points = String(xs.length);
        if (box.optional) box.hidden = xs.length === 0;
        plot.setData([xs, ys], !zoom);
        if (zoom) plot.setScale("x", { min: zoom[0], max: zoom[1] });
      }
    }
    let pending = false;
    const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; redraw(); }); } };
    let lastWidth = 0;
    const resize = () => {
      const w = width();
      if (w === lastWidth) return;
      lastWidth = w;
      for (const { plot } of charts.values()) plot.setSize({ width: w, height: 180 });
    };
    const observer = new ResizeObserver(() => requestAnimationFrame(resize));  // the grid's cells, not the window
    observer.observe(container);
    cleanup.push(() => { observer.disconnect(); for (const { plot } of charts.values()) plot.destroy(); });
    return {
      add(step, values) { points.set(step, { ...(points.get(step) || {}), ...values }); schedule(); },
      setZoom(range) { zoom = range; schedule(); },
    };
  }

  function jobPage(id) {
    let job = null;
    const header = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
    const chartBox = h("div", { class: "charts", id: "charts" });
    const fromIn = h("input", { type: "number", min: 0, id: "zoom-from", placeholder: "from step", style: "width:8rem" });
    const toIn = h("input", { type: "number", min: 0, id: "zoom-to", placeholder: "to step", style: "width:8rem" });
    const timeline = h("ol", { class: "timeline", id: "events" });
    const checkpoints = h("div", { id: "checkpoints" }, h("span", { class: "muted" }, "none yet"));
    const dataset = h("div", { id: "dataset" }, h("span", { class: "muted" }, "written once the data is prepared"));
    const evaluation = h("div", { id: "evaluation" }, h("span", { class: "muted" }, "written when the job succeeds"));
    const artifacts = h("div", { id: "artifacts" }, h("span", { class: "muted" }, "none yet"));
    const spec = h("pre", { id: "spec" });
    main.replaceChildren(
      h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), header,
      h("h2", {}, "Metrics"),
      h("div", { class: "row" }, h("label", {}, "From step", fromIn), h("label", {}, "To step", toIn),
        h("button", { type: "button", id: "zoom-apply", onclick: () => applyZoom() }, "Zoom"),
        h("button", { type: "button", onclick: () => { fromIn.value = toIn.value = ""; applyZoom(); } }, "Reset"),
        h("span", { class: "muted" }, "or drag across a chart; double-click resets")),
      h("p", {}), chartBox,
      h("h2", {}, "Events"), h("div", { class: "card" }, timeline),
      h("h2", {}, "Checkpoints"), h("div", { class: "card" }, checkpoints),
      h("h2", {}, "Dataset"), h("div", { class: "card" }, dataset),
      h("h2", {}, "Evaluation"), h("div", { class: "card" }, evaluation),
      h("h2", {}, "Artifacts"), h("div", { class: "card" }, artifacts),
      h("h2", {}, "Spec"), h("div", { class: "card" }, spec));
    const charts = makeCharts(chartBox);
    const seenEvents = new Set();
    const base = `/v1/fine_tuning/jobs/${id}`;

    async function applyZoom() {
      const from = fromIn.value === "" ? null : Number(fromIn.value);
      const to = toIn.value === "" ? null : Number(toIn.value);
      charts.setZoom(from === null && to === null ? null : [from ?? 0, to ?? (job && job.total_steps) ?? 0]);
      if (from !== null || to !== null) {  // the zoomed range at full resolution
        const q = new URLSearchParams({ max_points: "2000" });
        if (from !== null) q.set("from_step", from);
        if (to !== null) q.set("to_step", to);
        const series = await api(`${base}/metrics?${q}`);
        for (const p of series.data) charts.add(p.step, p.values);
      }
    }

    function addEvent(ev) {
      if (seenEvents.has(ev.id)) return;
      seenEvents.add(ev.id);
      timeline.append(h("li", { class: ev.level }, h("time", {}, fmt.date(ev.created_at)), ev.message));
      timeline.scrollTop = timeline.scrollHeight;
    }

    function drawHeader() {
      const j = job;
      const act = (label, path, question, cls) => h("button", { type: "button", class: cls, id: `job-${path}`, onclick: async () => {
        if (!(await confirmAction(question, label))) return;
        try { job = await api(`${base}/${path}`, { method: "POST" }); drawHeader(); } catch (e) { alert(e.message); }
      } }, label);
      const buttons = [];
      if (["queued", "running"].includes(j.status)) buttons.push(act("Pause", "pause", `Pause ${j.id}? A running job saves a checkpoint and stops; resume continues from it.`));
      if (j.status === "paused") buttons.push(act("Resume", "resume", `Resume ${j.id} from its newest checkpoint?`, "primary"));
      if (!TERMINAL.has(j.status) && j.status !== "cancelling") buttons.push(act("Cancel", "cancel", `Cancel ${j.id}? This cannot be undone.`, "danger"));
      const m = j.latest_metrics || {};
      const facts = {
        status: badge(j.status), phase: j.phase || "—", progress: progress(j.step, j.total_steps), model: j.model,
        "fine-tuned model": j.fine_tuned_model || "—", suffix: j.suffix || "—", created: fmt.date(j.created_at),
        "estimated finish": TERMINAL.has(j.status) ? "—" : fmt.date(j.estimated_finish), finished: fmt.date(j.finished_at),
        attempt: `${j.attempt}`, "trained tokens": fmt.num(j.trained_tokens), loss: fmt.num(m.loss),
      };
      if (j.status === "queued") {
        facts["queue position"] = j.queue_position ? `#${j.queue_position}` : "—";
        facts["waiting because"] = j.queue_reason || "—";
        facts["estimated start"] = fmt.date(j.estimated_start);
      }
      if (j.error) facts.error = h("span", { class: "error" }, `${j.error.code}: ${j.error.message}`);
      header.replaceChildren(
        h("div", { class: "row" }, h("h1", {}, j.id), h("span", { class: "spacer" }), buttons),
        h("dl", { class: "kv", id: "job-facts" }, Object.entries(facts).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
      spec.textContent = toYaml(jobSpec(j));
    }

    async function loadCheckpoints() {
      const res = await api(`${base}/checkpoints?limit=100`);
      if (!res.data.length) return;
      const keys = [...new Set(res.data.flatMap((c) => Object.keys(c.metrics)))].filter((k) => k !== "step" && k !== "total_steps");
      checkpoints.replaceChildren(h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Saved"), keys.map((k) => h("th", {}, k)))),
        h("tbody", {}, [...res.data].sort((a, b) => a.step_number - b.step_number).map((c) => h("tr", {},
          h("td", {}, c.step_number), h("td", {}, fmt.date(c.created_at)), keys.map((k) => h("td", {}, fmt.num(c.metrics[k])))))))));
    }

    let reportsLoaded = new Set();
    async function loadArtifacts() {
      const res = await api(`${base}/artifacts`);
      if (!res.data.length) return;
      artifacts.replaceChildren(h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Size"), h("th", { class: "hide-sm" }, "sha256"), h("th", {}, ""))),
        h("tbody", {}, res.data.map((a) => h("tr", { dataset: { artifact: a.name } },
          h("td", {}, a.name), h("td", {}, fmt.bytes(a.bytes)), h("td", { class: "hide-sm muted" }, a.sha256.slice(0, 16) + "…"),
          h("td", {}, h("button", { type: "button", class: "download", onclick: () => download(a.name) }, "Download"))))))));
      const names = new Set(res.data.map((a) => a.name));
      if (names.has("dataset_report.json") && !reportsLoaded.has("dataset")) {
        reportsLoaded.add("dataset");
        artifactJson(id, "dataset_report.json").then(drawDataset).catch((e) => showError(dataset, e));
      }
      if (names.has("eval_report.json") && !reportsLoaded.has("eval")) {
        reportsLoaded.add("eval");
        artifactJson(id, "eval_report.json").then(drawEvaluation).catch((e) => showError(evaluation, e));
      }
    }

    async function download(name) {
      try {
        const link = await api(`${base}/artifacts/${name}`);
        const a = h("a", { href: link.url, download: name.split("/").pop() });
        document.body.append(a);
        a.click();
        a.remove();
      } catch (e) { alert(e.message); }
    }

    function drawDataset(r) {
      const summary = {};
      for (const k of ["rows_read", "rows_used", "train_rows", "validation_rows", "dropped", "truncated", "max_seq_length"]) if (k in r) summary[k.replace(/_/g, " ")] = r[k];
      const rest = { ...r };
      for (const k of ["rows_read", "rows_used", "train_rows", "validation_rows", "dropped", "truncated", "max_seq_length", "dropped_by_reason", "dropped_rows", "train_tokens", "validation_tokens"]) delete rest[k];
      dataset.replaceChildren(...[
        renderValue(summary),
        h("h3", {}, "Dropped, by reason"), renderValue(r.dropped_by_reason || {}),
        r.dropped_rows && r.dropped_rows.length ? [h("h3", {}, "Dropped rows"), renderValue(r.dropped_rows)] : null,
        h("h3", {}, "Tokens per example"), renderValue({ train: r.train_tokens, validation: r.validation_tokens }),
        Object.keys(rest).length ? [h("h3", {}, "Other"), renderValue(rest)] : null,
      ].flat().filter(Boolean));
    }

    /** Evaluation: metrics, then samples side by side. Reads a base-vs-fine-tuned report in
     * the shapes it may take (report-level `base`/`tuned` sections, `metrics.base`/`.tuned`,
     * `base_metrics`; per-sample `base`/`base_output`/`base_prediction` next to the tuned
     * output); whatever else the report holds is shown as data under "Details". */
    function drawEvaluation(r) {
      const out = [];
      const obj = (x) => (x && typeof x === "object" && !Array.isArray(x) ? x : null);
      const isMetrics = (x) => obj(x) && Object.values(x).some((v) => typeof v === "number");
      const first = (o, keys) => { for (const k of keys) if (o && o[k] !== undefined && o[k] !== null) return o[k]; return undefined; };
      const text = (x) => (x === undefined || x === null ? "" : obj(x) ? String(first(x, ["prediction", "output", "text"]) ?? JSON.stringify(x)) : String(x));
      const base = obj(r.base), tuned = obj(r.tuned) || obj(r.fine_tuned);
      const m = obj(r.metrics) || {};
      const baseMetrics = [base && base.metrics, m.base, r.base_metrics, base].find(isMetrics);
      const tunedMetrics = [tuned && tuned.metrics, m.tuned, m.fine_tuned, r.tuned_metrics, tuned, m].find(isMetrics) || {};
      if (baseMetrics) {
        const keys = [...new Set([...Object.keys(baseMetrics), ...Object.keys(tunedMetrics)])]
          .filter((k) => typeof baseMetrics[k] === "number" || typeof tunedMetrics[k] === "number");
        out.push(h("div", { class: "scroll" }, h("table", { id: "eval-metrics" },
          h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Base model"), h("th", {}, "Fine-tuned"))),
          h("tbody", {}, keys.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, fmt.num(baseMetrics[k])), h("td", {}, fmt.num(tunedMetrics[k]))))))));
      } else if (Object.keys(m).length) {
        out.push(h("div", { id: "eval-metrics" }, renderValue(m)));
      }
      // Samples: the tuned list (or the plain one), joined with base outputs by row or index.
      const list = (x) => (Array.isArray(x) ? x : []);
      const tunedSamples = list(tuned && tuned.samples).length ? tuned.samples : list(r.samples);
      const baseByRow = new Map(list(base && base.samples).map((x, i) => [x.row ?? i, x]));
      const samples = tunedSamples.map((x, i) => {
        const cols = [["Prompt", x.prompt], ["Reference", x.reference]];
        const b = first(x, ["base", "base_output", "base_prediction"]) ?? baseByRow.get(x.row ?? i);
        if (b !== undefined) cols.push(["Base model", text(b)]);
        cols.push([b !== undefined ? "Fine-tuned" : "Output", text(first(x, ["tuned", "tuned_output", "tuned_prediction", "fine_tuned", "prediction", "output"]))]);
        return h("div", { class: "sample" }, cols.map(([label, v]) => h("div", {}, h("b", {}, label), v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v))));
      });
      if (samples.length) {
        out.push(h("details", { id: "eval-samples" }, h("summary", {}, `Samples (${samples.length})`), h("div", { class: "samples" }, samples)));
      } else if (r.note) out.push(h("p", { class: "muted" }, r.note));
      const known = new Set(["metrics", "samples", "base", "tuned", "fine_tuned", "base_metrics", "tuned_metrics", "note", "global_step"]);
      const rest = Object.fromEntries(Object.entries(r).filter(([k]) => !known.has(k)));
      for (const [name, section] of [["base", base], ["tuned", tuned]]) {
        if (section) for (const [k, v] of Object.entries(section)) if (k !== "metrics" && k !== "samples" && section !== baseMetrics && section !== tunedMetrics) rest[`${name}.${k}`] = v;
      }
      if (Object.keys(rest).length) out.push(h("h3", {}, "Details"), renderValue(rest));
      evaluation.replaceChildren(...(out.length ? out : [h("span", { class: "muted" }, "empty report")]));
    }

    async function refresh() {
      job = await api(base);
      drawHeader();
      await Promise.all([loadCheckpoints(), loadArtifacts()]);
    }

    /** The whole series again: a point can gain values after it was streamed (the final
     * evaluation is written onto the last training step). */
    async function loadMetrics() {
      const series = await api(`${base}/metrics?max_points=2000`);
      for (const p of series.data) charts.add(p.step, p.values);
    }

    async function initial() {
      await refresh();
      await loadMetrics();
      let after = null;
      for (let i = 0; i < 20; i++) {
        const page = await api(`${base}/events?order=asc&limit=100${after ? `&after=${after}` : ""}`);
        page.data.forEach(addEvent);
        if (!page.has_more) break;
        after = page.last_id;
      }
      if (!TERMINAL.has(job.status)) follow();
    }

    const abort = new AbortController();
    cleanup.push(() => abort.abort());
    async function follow() {
      let lastId = null;
      let lastStatus = job.status, lastStep = job.step, lastPhase = job.phase;
      while (!abort.signal.aborted) {
        try {
          lastId = await streamEvents(`${base}/stream`, (type, data) => {
            if (type === "event") addEvent(data);
            else if (type === "metrics") charts.add(data.step, data.values);
            else if (type === "status") {
              Object.assign(job, { status: data.status, phase: data.phase, step: data.step, total_steps: data.total_steps });
              drawHeader();
              if (data.status !== lastStatus || data.phase !== lastPhase) loadMetrics().catch(console.error);
              if (data.status !== lastStatus || (data.step !== lastStep && data.step % 5 === 0)) refresh().catch(console.error);
              lastPhase = data.phase;
              lastStatus = data.status;
              lastStep = data.step;
            }
          }, abort.signal, lastId);
        } catch (e) {
          if (abort.signal.aborted) return;
          console.warn("stream", e);
        }
        await refresh().catch(console.error);
        if (TERMINAL.has(job.status)) { await loadMetrics().catch(console.error); return; }
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    every(5000, async () => { if (job && (job.status === "queued" || job.status === "validating_files")) { job = await api(base); drawHeader(); } });
    initial().catch((e) => showError(header, e));
  }

  // --- pool ---------------------------------------------------------------------------

  function poolPage() {
    const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    main.replaceChildren(h("h1", {}, "Pool"), box);
    async function load() {
      const p = await api("/v1/pool");
      const workers = p.workers.length ? h("div", { class: "scroll" }, h("table", { id: "workers" },
        h("thead", {}, h("tr", {}, ["Worker", "GPUs", "GPU memory", "Slots used", "Your running jobs", "Others' jobs", "Last heartbeat"].map((c) => h("th", {}, c)))),
        h("tbody", {}, p.workers.map((w) => h("tr", { class: w.stale ? "stale" : "" },
          h("td", { title: w.id }, w.hostname, " ", w.stale ? h("span", { class: "badge" }, "stale") : null),
          h("td", {}, w.gpus ? `${w.gpus} × ${w.gpu_name || "GPU"}` : "CPU"),
          h("td", {}, w.gpu_memory_gb ? `${fmt.num(w.gpu_memory_gb)} GB` : "—"),
          h("td", {}, progress(w.used_slots, w.slots)),
          h("td", {}, w.running_job_ids.length ? w.running_job_ids.map((j) => h("div", {}, h("a", { href: `#/jobs/${j}` }, j))) : "—"),
          h("td", {}, w.other_running_jobs || "—"),
          h("td", { title: fmt.date(w.last_heartbeat) }, fmt.ago(w.last_heartbeat))))))) : h("p", { class: "muted" }, "No workers have registered.");
      const pct = (x) => `${Math.round(x * 1000) / 10}%`;
      const teams = h("div", { id: "shares" }, p.teams.map((t) => h("div", { class: "card", style: "padding:.5rem .8rem;margin-bottom:.5rem" },
        h("div", { class: "row" }, h("b", {}, t.label, t.mine ? " (you)" : ""), h("span", { class: "spacer" }),
          h("span", { class: "muted" }, `${t.running_jobs} running, ${t.waiting_jobs} waiting`)),
        h("div", { class: "row" }, h("span", { style: "width:6.5rem" }, "share target"),
          h("div", { class: "bar share", style: "flex:1" }, h("span", { style: `width:${pct(t.share_target)}` }), h("em", {}, pct(t.share_target)))),
        h("div", { class: "row" }, h("span", { style: "width:6.5rem" }, "used (24 h)"),
          h("div", { class: "bar used", style: "flex:1" }, h("span", { style: `width:${pct(t.used)}` }), h("em", {}, `${pct(t.used)} · ${fmt.num(Math.round(t.slot_seconds / 60))} slot-min`))))));
      const queue = p.queue.length ? h("div", { class: "scroll" }, h("table", { id: "queue" },
        h("thead", {}, h("tr", {}, ["#", "Job", "Model", "Suffix", "Priority", "Created"].map((c) => h("th", {}, c)))),
        h("tbody", {}, p.queue.map((q) => (q.job_id
          ? h("tr", {}, h("td", {}, q.position), h("td", {}, h("a", { href: `#/jobs/${q.job_id}` }, q.job_id)), h("td", {}, shortModel(q.model)),
            h("td", {}, q.suffix || ""), h("td", {}, q.priority), h("td", {}, fmt.date(q.created_at)))
          : h("tr", { class: "muted" }, h("td", {}, q.position), h("td", { colspan: 5 }, `${q.others} job(s) of other teams`))))))) : h("p", { class: "muted" }, "Nothing is waiting.");
      box.replaceChildren(h("h2", {}, "Workers"), h("div", { class: "card" }, workers),
        h("h2", {}, `Fair share over ${p.window_hours} h`), teams,
        h("h2", {}, `Queue, in dispatch order (${p.waiting_total} waiting)`), h("div", { class: "card" }, queue));
    }
    load().catch((e) => showError(box, e));
    every(3000, load);
  }

  // --- new job ------------------------------------------------------------------------

  function newJobPage() {
    const fileIn = h("input", { type: "file", id: "upload", accept: ".jsonl,.json,.csv,.parquet" });
    const fileSel = h("select", { id: "training-file" }, h("option", { value: "" }, "— choose an uploaded file —"));
    const fileInfo = h("p", { class: "muted", id: "file-info" });
    const promptCol = h("select", { id: "prompt-column" });
    const completionCol = h("select", { id: "completion-column" });
    const promptT = h("textarea", { id: "template-prompt", rows: 2, placeholder: "다음 글을 요약해주세요: {document}" });
    const completionT = h("textarea", { id: "template-completion", rows: 2, placeholder: "{summary}" });
    const num = (id, label, value, attrs = {}) => {
      const el = h("input", { id, type: "number", value, ...attrs });
      return [el, h("label", {}, label, el)];
    };
    const models = h("datalist", { id: "models-used" });
    const model = h("input", { id: "model", list: "models-used", placeholder: "owner/name or a directory in a model root", style: "width:100%" });
    const suffix = h("input", { id: "suffix", placeholder: "my-run", maxlength: 64 });
    const [epochs, epochsL] = num("n_epochs", "Epochs", 3, { step: 1, min: 1, max: 50 });
    const [maxSteps, maxStepsL] = num("max_steps", "Max steps (optional)", "", { min: 1 });
    const [lr, lrL] = num("learning_rate", "Learning rate", 0.0002, { step: "any", min: 0 });
    const [batch, batchL] = num("batch_size", "Batch size", 4, { min: 1, max: 256 });
    const [seqLen, seqLenL] = num("max_seq_length", "Max sequence length", 2048, { min: 8 });
    const [every_, everyL] = num("checkpoint_every_steps", "Checkpoint every (steps)", "", { min: 1 });
    const [rank, rankL] = num("lora_r", "LoRA rank", 16, { min: 1 });
    const [split, splitL] = num("validation_split", "Validation split", 0.1, { step: "any", min: 0, max: 0.99 });
    const [samples, samplesL] = num("generation_samples", "Eval samples", 8, { min: 0 });
    const [newTokens, newTokensL] = num("max_new_tokens", "Eval max new tokens", 128, { min: 1 });
    const [gpus, gpusL] = num("gpus", "GPUs (0 = CPU)", 1, { min: 0 });
    const result = h("div", { id: "validation" });
    const files = new Map();

    function setColumns(f) {
      fileInfo.textContent = f ? `${f.filename}: ${f.row_count} rows, ${f.format}, columns: ${f.columns.join(", ")}` : "";
      const opts = () => [h("option", { value: "" }, "—"), ...(f ? f.columns : []).map((c) => h("option", { value: c }, c))];
      promptCol.replaceChildren(...opts());
      completionCol.replaceChildren(...opts());
      if (f && !f.columns.includes("messages") && !f.columns.includes("prompt")) {
        const guess = (names) => f.columns.find((c) => names.includes(c.toLowerCase()));
        const p = guess(["document", "input", "question", "instruction", "text", "source"]);
        const c = guess(["summary", "output", "answer", "response", "target", "completion"]);
        if (p && !promptT.value) { promptCol.value = p; promptT.value = `{${p}}`; }
        if (c && !completionT.value) { completionCol.value = c; completionT.value = `{${c}}`; }
      }
    }
    promptCol.addEventListener("change", () => { if (promptCol.value) promptT.value = promptT.value.replace(/\{[^}]*\}|$/, `{${promptCol.value}}`); });
    completionCol.addEventListener("change", () => { if (completionCol.value) completionT.value = `{${completionCol.value}}`; });
    fileSel.addEventListener("change", () => setColumns(files.get(fileSel.value)));

    async function loadFiles(select) {
      const res = await api("/v1/files?purpose=fine-tune&limit=100");
      files.clear();
      fileSel.replaceChildren(h("option", { value: "" }, "— choose an uploaded file —"),
        ...res.data.map((f) => { files.set(f.id, f); return h("option", { value: f.id }, `${f.filename} (${f.id}, ${f.row_count} rows)`); }));
      if (select) fileSel.value = select;
      setColumns(files.get(fileSel.value));
    }
    fileIn.addEventListener("change", async () => {
      if (!fileIn.files.length) return;
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", fileIn.files[0]);
      fileInfo.textContent = "Uploading…";
      try {
        const f = await api("/v1/files", { method: "POST", form });
        await loadFiles(f.id);
      } catch (e) { fileInfo.textContent = ""; showError(result, e); }
    });

    function body() {
      const val = (el) => (el.value === "" ? undefined : Number(el.value));
      const hp = { n_epochs: val(epochs), max_steps: val(maxSteps), learning_rate: val(lr), batch_size: val(batch),
        max_seq_length: val(seqLen), checkpoint_every_steps: val(every_) };
      const template = {};
      if (promptT.value.trim()) template.prompt = promptT.value;
      if (completionT.value.trim()) template.completion = completionT.value;
      const b = { model: model.value.trim(), training_file: fileSel.value, hyperparameters: hp, lora: { r: val(rank) },
        validation_split: val(split), evaluation: { generation_samples: val(samples), max_new_tokens: val(newTokens) },
        resources: { gpus: val(gpus) } };
      if (Object.keys(template).length) b.template = template;
      if (suffix.value.trim()) b.suffix = suffix.value.trim();
      return JSON.parse(JSON.stringify(b));  // drops the undefined (unset) fields
    }
    // The memory plan of the dry run (docs/fit-planning.md): what one GPU needs, and per GPU
    // kind of the pool the micro-batch x accumulation, checkpointing and time estimate.
    function fitPlan(p) {
      if (!p) return null;
      const facts = p.status === "planned"
        ? [`needs ~${p.needed_gpu_memory_gb} GiB per GPU`, p.optimizer_steps && `${fmt.num(p.optimizer_steps)} optimizer steps`,
          p.total_tokens && `${fmt.num(p.total_tokens)} trained tokens`].filter(Boolean).join(" · ")
        : `not planned here: ${p.reason || p.status}`;
      return h("div", { id: "fit-plan" }, h("h3", {}, "Fit plan"), h("p", {}, facts),
        p.gpus && p.gpus.length ? renderValue(p.gpus) : null);
    }
    const validateBtn = h("button", { type: "button", id: "validate", onclick: async () => {
      result.replaceChildren(h("p", { class: "muted" }, "Checking the request and counting tokens on a worker…"));
      validateBtn.disabled = true;
      try {
        const r = await api("/v1/fine_tuning/jobs/validate", { method: "POST", json: body() });
        result.replaceChildren(h("div", { class: "card", id: "dry-run" }, h("h2", {}, "Dry run: valid"),
          r.warnings.length ? h("p", { class: "error" }, r.warnings.join("\n")) : null,
          renderValue(r.token_counts || {}), fitPlan(r.plan), h("h3", {}, "Resolved spec"), h("pre", {}, toYaml(r.spec))));
      } catch (e) { showError(result, e); } finally { validateBtn.disabled = false; }
    } }, "Validate");
    const createBtn = h("button", { type: "button", id: "create", class: "primary", onclick: async () => {
      createBtn.disabled = true;
      try {
        const j = await api("/v1/fine_tuning/jobs", { method: "POST", json: body() });
        location.hash = `#/jobs/${j.id}`;
      } catch (e) { showError(result, e); createBtn.disabled = false; }
    } }, "Create job");

    main.replaceChildren(h("h1", {}, "New job"),
      h("div", { class: "card" }, h("h2", {}, "1. Training data"),
        h("div", { class: "form-grid" }, h("label", {}, "Upload a file (JSONL, CSV, Parquet)", fileIn), h("label", {}, "or pick one", fileSel)), fileInfo),
      h("div", { class: "card" }, h("h2", {}, "2. Model and template"),
        h("label", {}, "Base model (your team's earlier models are suggested)", model, models), h("p", {}),
        h("div", { class: "form-grid" }, h("label", {}, "Prompt column", promptCol), h("label", {}, "Completion column", completionCol)),
        h("p", { class: "muted" }, "Templates may add text around {column} fields. Files with messages or prompt/completion columns need no template."),
        h("div", { class: "form-grid" }, h("label", {}, "User turn template", promptT), h("label", {}, "Assistant turn template", completionT))),
      h("div", { class: "card" }, h("h2", {}, "3. Hyperparameters"),
        h("div", { class: "form-grid" }, epochsL, maxStepsL, lrL, batchL, seqLenL, everyL, rankL, splitL, samplesL, newTokensL, gpusL, h("label", {}, "Suffix", suffix))),
      h("div", { class: "row" }, validateBtn, createBtn), h("p", {}), result);
    loadFiles().catch((e) => showError(result, e));
    api("/v1/fine_tuning/jobs?limit=100").then((res) => {
      const seen = [...new Set(res.data.map((j) => j.model))];
      models.replaceChildren(...seen.map((m) => h("option", { value: m })));
      if (!model.value && seen.length) model.value = seen[0];
    }).catch(() => {});
  }

  // --- routing ------------------------------------------------------------------------

  function route(message) {
    for (const stop of cleanup.splice(0)) stop();
    const nav = document.getElementById("nav");
    if (!apiKey()) { nav.hidden = true; signInPage(message); return; }
    nav.hidden = false;
    const parts = (location.hash.replace(/^#\/?/, "") || "jobs").split("/");
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.page === parts[0]);
    if (parts[0] === "jobs" && parts[1]) jobPage(decodeURIComponent(parts[1]));
    else if (parts[0] === "pool") poolPage();
    else if (parts[0] === "new") newJobPage();
    else jobsPage();
  }
  window.addEventListener("hashchange", () => route());
  route();
})();
