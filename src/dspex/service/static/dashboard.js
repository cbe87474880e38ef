// dspex dashboard: plain ES module, no framework, no build step, nothing loaded from outside.
//
// Every panel reads the service's own JSON API (the same routes and scopes as any client). When
// the server has API keys, the first 401 reveals a key field; the key is kept in sessionStorage
// only (gone when the tab closes) and sent as `Authorization: Bearer`.

const KEY_STORAGE = "dspex.apiKey";
const REFRESH_MS = 4000;
const HEALTH_EVERY = 3; // health and programs are refreshed every third tick
const EXECUTION_LIMIT = 30;

const state = {
  tick: 0,
  busy: false,
  selectedProgram: null,
  selectedExecution: null,
  programSeen: new Map(), // program name -> execution_count when its graph was last drawn
  streams: new Map(), // batch id -> {close()} of the live progress stream
  followed: new Set(), // batches streamed once: a batch the list still calls running after its
  //                      stream ended (run by a worker that died) is polled, not re-streamed
  batches: new Map(), // batch id -> the <li> showing it
};

class AuthError extends Error {}

// ---------------------------------------------------------------------------------------------
// small helpers

/** Build an element; strings become text nodes, so data is never parsed as HTML. */
// Ids are time-ordered (UUIDv7): their first characters are a timestamp, the same for every row
// made in one millisecond. A short id shows the random tail, which tells rows apart; the whole id
// is in the tooltip, in data-id and in the detail view.
function shortId(id, cls = null) {
  const tail = id.replace(/-/g, "").slice(-10);
  return h("code", { class: cls, title: id, dataset: { id } }, `…${tail}`);
}

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);

function badge(status) {
  const value = status ?? "unknown";
  return h("span", { class: `badge ${value}`, dataset: { status: value } }, value.replace("_", "-"));
}

function formatMs(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value).toLocaleString()} ms`;
  return `${value.toFixed(1)} ms`;
}

function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour12: false });
  return date.toDateString() === today.toDateString()
    ? time
    : `${date.toLocaleDateString()} ${time}`;
}

function percent(part, whole) {
  return whole > 0 ? Math.min(100, Math.floor((part / whole) * 100)) : 100;
}

function showBanner(message) {
  const banner = $("#banner");
  banner.textContent = message ?? "";
  banner.hidden = !message;
}

function emptyRow(columns, text) {
  return h("tr", { class: "placeholder" }, h("td", { colspan: columns }, text));
}

// ---------------------------------------------------------------------------------------------
// the API

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/**
 * GET a JSON route. `accept` lists extra statuses whose JSON body is still the answer (the
 * health report comes with 503 when unhealthy).
 */
async function api(path, { accept = [] } = {}) {
  const response = await fetch(path, { headers: authHeaders({ Accept: "application/json" }) });
  if (response.status === 401) {
    askForKey(sessionStorage.getItem(KEY_STORAGE) ? "That key was not accepted." : "");
    throw new AuthError("an API key is needed");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok || (accept.includes(response.status) && body)) return body;
  const message = body?.error?.message ?? `${response.status} ${response.statusText}`;
  if (response.status === 403) {
    askForKey("This key lacks the read scope.");
    throw new AuthError(message);
  }
  throw new Error(`${path}: ${message}`);
}

function askForKey(message) {
  const form = $("#key-form");
  form.hidden = false;
  $("#key-message").textContent = message;
  if (document.activeElement === document.body) $("#api-key").focus();
}

function setupKeyForm() {
  const form = $("#key-form");
  if (sessionStorage.getItem(KEY_STORAGE)) form.hidden = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#api-key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_STORAGE, value);
    $("#api-key").value = "";
    $("#key-message").textContent = "";
    closeStreams();
    state.followed.clear();
    refresh({ full: true });
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    closeStreams();
    refresh({ full: true });
  });
}

// ---------------------------------------------------------------------------------------------
// health and breakers

async function loadHealth() {
  const report = await api("/health", { accept: [503] });
  const overall = $("#overall-health");
  overall.className = `badge ${report.status}`;
  overall.dataset.status = report.status;
  overall.textContent = report.status;
  overall.title = `checked ${formatTime(report.checked_at)} in ${formatMs(report.duration_ms)}`;

  const rows = report.checks.map((check) =>
    h(
      "tr",
      { dataset: { check: check.name, status: check.status } },
      h("td", {}, h("code", {}, check.name)),
      h("td", {}, badge(check.status)),
      h("td", { class: "reason" }, check.reason || "—"),
      h("td", { class: "num" }, formatMs(check.duration_ms)),
    ),
  );
  $("#health-table tbody").replaceChildren(...(rows.length ? rows : [emptyRow(4, "no checks")]));

  // Breaker states: the `breakers` check lists every persisted breaker; each backend check
  // carries its own, so a backend that never tripped still shows as closed.
  const states = new Map();
  for (const check of report.checks) {
    if (check.name.startsWith("backend:") && check.details?.breaker) {
      states.set(check.details.backend ?? check.name.slice(8), check.details.breaker);
    }
  }
  const persisted = report.checks.find((check) => check.name === "breakers")?.details?.states;
  for (const [backend, breaker] of Object.entries(persisted ?? {})) states.set(backend, breaker);
  const items = [...states.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([backend, breaker]) =>
      h(
        "li",
        { dataset: { backend, breaker } },
        h("span", { class: "name" }, backend),
        badge(breaker),
      ),
    );
  $("#breakers").replaceChildren(
    ...(items.length ? items : [h("li", { class: "empty" }, "no backends")]),
  );
}

// ---------------------------------------------------------------------------------------------
// executions and the detail drawer

async function loadExecutions() {
  const params = new URLSearchParams({ limit: String(EXECUTION_LIMIT) });
  const status = $("#status-filter").value;
  if (status) params.set("status", status);
  const page = await api(`/executions?${params}`);
  const rows = page.items.map((item) => {
    const row = h(
      "tr",
      {
        tabindex: 0,
        class: item.execution_id === state.selectedExecution ? "selected" : null,
        "aria-label": `execution ${item.execution_id}, ${item.status}`,
        dataset: { executionId: item.execution_id, status: item.status },
      },
      h("td", { class: "time" }, formatTime(item.created_at)),
      h("td", {}, item.program, h("span", { class: "muted" }, ` v${item.program_version}`)),
      h("td", {}, badge(item.status)),
      h("td", { class: "num" }, formatMs(item.duration_ms)),
      h("td", {}, item.error_code ? h("code", {}, item.error_code) : "—"),
      h("td", { class: "id" }, shortId(item.execution_id)),
    );
    return row;
  });
  $("#executions-table tbody").replaceChildren(
    ...(rows.length ? rows : [emptyRow(6, "no executions recorded yet")]),
  );
}

function setupExecutionTable() {
  const body = $("#executions-table tbody");
  const open = (event) => {
    const row = event.target.closest("tr[data-execution-id]");
    if (row) openExecution(row.dataset.executionId);
  };
  body.addEventListener("click", open);
  body.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open(event);
    }
  });
  $("#status-filter").addEventListener("change", () => loadExecutions().catch(report));
  $("#drawer-close").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("#drawer").hidden) closeDrawer();
  });
}

function closeDrawer() {
  $("#drawer").hidden = true;
  const previous = state.selectedExecution;
  state.selectedExecution = null;
  for (const row of document.querySelectorAll("#executions-table tr.selected")) {
    row.classList.remove("selected");
  }
  document.querySelector(`tr[data-execution-id="${CSS.escape(previous ?? "")}"]`)?.focus();
}

async function openExecution(id) {
  state.selectedExecution = id;
  for (const row of document.querySelectorAll("#executions-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.executionId === id);
  }
  const drawer = $("#drawer");
  drawer.hidden = false;
  drawer.dataset.executionId = id;
  $("#drawer-title").textContent = "Execution";
  $("#drawer-body").replaceChildren(h("p", { class: "empty" }, "loading…"));
  $("#drawer-close").focus();
  let detail;
  try {
    detail = await api(`/executions/${encodeURIComponent(id)}`);
  } catch (error) {
    $("#drawer-body").replaceChildren(h("p", { class: "error-box" }, String(error.message)));
    return;
  }
  if (state.selectedExecution !== id) return; // another row was opened meanwhile
  $("#drawer-title").replaceChildren("Execution ", badge(detail.status));
  $("#drawer-body").replaceChildren(...renderExecution(detail));
}

function renderExecution(detail) {
  const facts = [
    ["id", h("code", {}, detail.execution_id)],
    ["program", `${detail.program} v${detail.program_version}`],
    ["created", formatTime(detail.created_at)],
    ["latency", formatMs(detail.duration_ms)],
    ["backend", detail.backend ?? "—"],
    ["attempts", String(detail.attempts)],
  ];
  if (detail.batch_id) facts.push(["batch", h("code", {}, `${detail.batch_id} #${detail.batch_index}`)]);
  const parts = [h("dl", {}, facts.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]))];
  if (detail.error) {
    parts.push(
      h(
        "p",
        { class: "error-box", role: "note" },
        h("strong", {}, detail.error.code),
        detail.error.module ? ` in ${detail.error.module}` : "",
        `: ${detail.error.message}`,
      ),
    );
  }
  parts.push(h("h3", {}, "Steps"));
  const steps = detail.steps.map((step) =>
    h(
      "tr",
      { dataset: { module: step.module, status: step.status } },
      h("td", {}, step.module),
      h("td", {}, badge(step.status)),
      h("td", { class: "num" }, formatMs(step.started_ms)),
      h("td", { class: "num" }, formatMs(step.duration_ms)),
      h("td", { class: "num" }, String(step.attempts)),
      h("td", {}, step.error_code ? h("code", { title: step.error_message ?? "" }, step.error_code) : "—"),
    ),
  );
  parts.push(
    h(
      "table",
      { class: "steps" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["module", "status", "start", "took", "attempts", "error"].map((name, i) =>
            h("th", { scope: "col", class: i >= 2 && i <= 4 ? "num" : null }, name),
          ),
        ),
      ),
      h("tbody", {}, steps.length ? steps : [emptyRow(6, "no steps recorded")]),
    ),
  );
  parts.push(h("h3", {}, "Inputs"), h("pre", {}, JSON.stringify(detail.inputs, null, 2)));
  if (detail.outputs) {
    parts.push(h("h3", {}, "Outputs"), h("pre", {}, JSON.stringify(detail.outputs, null, 2)));
  }
  return parts;
}

// ---------------------------------------------------------------------------------------------
// programs and their graphs

async function loadPrograms() {
  const { items } = await api("/programs");
  const buttons = items.map((program) => {
    const selected = program.name === state.selectedProgram;
    const rate =
      program.success_rate === null ? "no runs" : `${Math.round(program.success_rate * 100)}% ok`;
    return h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          "aria-pressed": selected ? "true" : "false",
          dataset: { program: program.name },
          onclick: () => selectProgram(program.name),
        },
        h("span", { class: "pname" }, program.name),
        " ",
        badge(program.status),
        h(
          "span",
          { class: "pmeta" },
          `v${program.version} · ${program.modules} module${program.modules === 1 ? "" : "s"} · ` +
            `${program.execution_count} runs · ${rate}`,
        ),
      ),
    );
  });
  $("#program-list").replaceChildren(
    ...(buttons.length ? buttons : [h("li", { class: "empty" }, "no programs registered")]),
  );
  // Redraw the open graph when its program ran since (a new last run to chart).
  const open = items.find((program) => program.name === state.selectedProgram);
  if (open && state.programSeen.get(open.name) !== open.execution_count) {
    await drawGraph(open.name, open.execution_count);
  }
  // Versions change without runs (optimized, evaluated, promoted): redrawn on every refresh.
  if (open) await drawVersions(open.name);
}

// ---------------------------------------------------------------------------------------------
// versions: scores, lineage, promotions; optimization runs

function score(value) {
  return value === null || value === undefined ? "—" : value.toFixed(3);
}

function scoreLine(evaluation) {
  const failed = evaluation.failed ? `, ${evaluation.failed} failed` : "";
  return h(
    "div",
    {
      class: "score",
      dataset: { metric: evaluation.metric, score: String(evaluation.score), n: String(evaluation.n) },
      title: `devset sha256 ${evaluation.devset_hash}`,
    },
    h("b", {}, evaluation.metric),
    ` ${score(evaluation.score)}`,
    h(
      "span",
      { class: "muted" },
      ` n=${evaluation.n}${failed} · devset ${evaluation.devset_hash.slice(0, 8)}`,
      evaluation.status === "incomplete" ? " · incomplete" : "",
    ),
  );
}

function lineageBlock(lineage) {
  const settings = Object.entries(lineage.settings ?? {})
    .map(([key, value]) => `${key}=${value}`)
    .join(", ");
  return h(
    "div",
    {
      class: "lineage-entry",
      dataset: {
        parent: String(lineage.parent_version),
        optimizer: lineage.optimizer,
        seed: String(lineage.seed),
        score: String(lineage.score),
      },
    },
    h("span", { class: "from" }, `from v${lineage.parent_version}`),
    " · ",
    h("code", {}, lineage.optimizer),
    lineage.seed === null ? "" : ` · seed ${lineage.seed}`,
    h(
      "div",
      { class: "val" },
      `validation ${lineage.metric}: ${score(lineage.baseline_score)} → ${score(lineage.score)}`,
    ),
    settings ? h("div", { class: "muted small settings" }, settings) : "",
    h("div", { class: "small" }, "run ", shortId(lineage.optimization_id, "muted")),
  );
}

function promotionLine(promotion) {
  const gate =
    promotion.score === null
      ? ""
      : ` · ${promotion.metric} ${score(promotion.score)} vs ${score(promotion.previous_score)}`;
  return h(
    "div",
    { class: "promotion", dataset: { forced: String(promotion.forced) } },
    promotion.forced ? h("span", { class: "badge forced" }, "forced") : h("span", {}, "gated"),
    promotion.previous_version === null ? "" : ` from v${promotion.previous_version}`,
    gate,
    h("span", { class: "muted" }, ` · ${formatTime(promotion.created_at)} by ${promotion.promoted_by}`),
  );
}

function optimizationItem(run) {
  const to = run.version === null ? "—" : `v${run.version}`;
  return h(
    "li",
    { dataset: { optimizationId: run.optimization_id, status: run.status } },
    badge(run.status),
    " ",
    h("code", {}, run.optimizer),
    ` v${run.parent_version} → ${to} · ${score(run.baseline_score)} → ${score(run.score)}`,
    run.attempts > 1 ? ` · ${run.attempts} attempts` : "",
    " ",
    shortId(run.optimization_id, "muted"),
    run.resumable
      ? h("span", { class: "muted small" }, ` resume: dspex optimize --resume ${run.optimization_id}`)
      : "",
  );
}

async function drawVersions(name) {
  const data = await api(`/dashboard/programs/${encodeURIComponent(name)}/versions`);
  if (state.selectedProgram !== name) return;
  const container = $("#versions");
  container.hidden = false;
  container.dataset.program = name;
  container.dataset.current = String(data.current);
  const rows = data.versions.map((version) =>
    h(
      "tr",
      {
        class: version.current ? "current" : null,
        dataset: {
          version: String(version.version),
          status: version.status,
          current: String(version.current),
        },
      },
      h(
        "td",
        {},
        `v${version.version}`,
        version.current
          ? h("span", { class: "current-mark", title: "what run, batch and the service use" }, "current")
          : "",
      ),
      h("td", {}, badge(version.status)),
      h("td", { class: "scores" }, version.evaluations.length ? version.evaluations.map(scoreLine) : "—"),
      h("td", { class: "lineage" }, version.lineage ? lineageBlock(version.lineage) : "—"),
      h(
        "td",
        { class: "promotions" },
        version.promotions.length ? version.promotions.map(promotionLine) : "—",
      ),
    ),
  );
  $("#versions-table tbody").replaceChildren(...(rows.length ? rows : [emptyRow(5, "no versions")]));
  const runs = data.optimizations.map(optimizationItem);
  $("#optimization-list").replaceChildren(
    ...(runs.length ? runs : [h("li", { class: "empty" }, "no optimization runs")]),
  );
}

async function selectProgram(name) {
  state.selectedProgram = name;
  for (const button of document.querySelectorAll("#program-list button")) {
    button.setAttribute("aria-pressed", button.dataset.program === name ? "true" : "false");
  }
  state.programSeen.delete(name);
  await loadPrograms().catch(report);
}

function pathLine(title, path) {
  return h(
    "p",
    { class: "path" },
    h("b", {}, `${title}:`),
    path.length ? h("span", {}, path.join(" → ")) : "—",
  );
}

async function drawGraph(name, seenCount) {
  const graph = await api(`/dashboard/programs/${encodeURIComponent(name)}/graph`);
  if (state.selectedProgram !== name) return;
  state.programSeen.set(name, seenCount);
  const container = $("#graph");
  container.dataset.program = name;
  const parts = [
    h("h3", {}, `${graph.program} `, h("span", { class: "muted" }, `v${graph.version}`)),
    pathLine("planned critical path", graph.critical_path),
    h("div", { class: "chart dag", "aria-label": "dependency graph" }),
  ];
  const run = graph.last_run;
  if (run) {
    parts.push(
      h("h3", {}, "Last run"),
      h(
        "p",
        { class: "run-meta" },
        badge(run.status),
        h("span", {}, `took ${formatMs(run.duration_ms)}`),
        h("span", {}, `started ${formatTime(run.started_at)}`),
        h("code", {}, run.execution_id),
      ),
      pathLine("critical path of the run", graph.run_critical_path),
      h("div", { class: "chart gantt", "aria-label": "Gantt chart of the last run" }),
      h(
        "div",
        { class: "legend" },
        [
          ["#2f9e63", "completed"],
          ["#d9483b", "failed"],
          ["#e8a317", "cancelled"],
          ["#9aa1ab", "skipped"],
        ].map(([colour, label]) => h("span", {}, h("i", { style: `background:${colour}` }), label)),
        h("span", {}, h("i", { class: "crit" }), "critical path"),
      ),
    );
  } else {
    parts.push(h("p", { class: "empty" }, "No recorded run yet: run the program to see its timeline."));
  }
  container.replaceChildren(...parts);
  // The SVGs are rendered and escaped by the server (dspex.reports), the same drawings as
  // `dspex graph --html`.
  container.querySelector(".chart.dag").innerHTML = graph.dag_svg;
  if (run) container.querySelector(".chart.gantt").innerHTML = graph.gantt_svg;
}

// ---------------------------------------------------------------------------------------------
// batches with live progress

function batchItem(batch) {
  const li = h("li", { class: "batch" });
  li.dataset.batchId = batch.batch_id;
  li.append(
    h(
      "div",
      { class: "batch-line" },
      h("span", { class: "name" }, batch.program),
      shortId(batch.batch_id, "muted"),
      h("span", { class: "status" }),
      h("span", { class: "live", title: "progress streamed as it happens" }, "live"),
      h("span", { class: "counts" }),
    ),
    h(
      "div",
      { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": `progress of batch ${batch.batch_id}` },
      h("div", { class: "fill" }),
    ),
  );
  return li;
}

function updateBatch(li, { status, total, completed, failed, cancelled }) {
  const done = completed + failed + cancelled;
  const pct = percent(done, total);
  li.dataset.status = status;
  li.dataset.percent = String(pct);
  li.dataset.done = String(done);
  li.querySelector(".status").replaceChildren(badge(status));
  const counts = [h("span", { class: "pct" }, `${pct}%`), ` · ${done} / ${total}`];
  if (failed) counts.push(` · ${failed} failed`);
  if (cancelled) counts.push(` · ${cancelled} cancelled`);
  li.querySelector(".counts").replaceChildren(...counts);
  const bar = li.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(pct));
  const fill = bar.querySelector(".fill");
  fill.style.width = `${pct}%`;
  fill.classList.toggle("failed", failed > 0 && completed === 0);
}

async function loadBatches() {
  const { items } = await api("/dashboard/batches");
  const list = $("#batch-list");
  const seen = new Set();
  const nodes = items.map((batch) => {
    seen.add(batch.batch_id);
    let li = state.batches.get(batch.batch_id);
    if (!li) {
      li = batchItem(batch);
      state.batches.set(batch.batch_id, li);
    }
    const live = state.streams.has(batch.batch_id);
    // A live stream is fresher than the list; the list still wins once the batch ended.
    if (!live || batch.status !== "running") updateBatch(li, { status: batch.status, ...batch.counts });
    if (batch.status === "running" && !live && !state.followed.has(batch.batch_id)) {
      followBatch(batch.batch_id, li);
    }
    return li;
  });
  for (const id of [...state.batches.keys()]) if (!seen.has(id)) state.batches.delete(id);
  list.replaceChildren(...(nodes.length ? nodes : [h("li", { class: "empty" }, "no batches yet")]));
}

function onBatchEvent(id, li, event, data) {
  if (event === "progress") {
    const progress = JSON.parse(data);
    li.dataset.events = String(Number(li.dataset.events ?? 0) + 1);
    updateBatch(li, { status: "running", ...progress });
  } else if (event === "done") {
    stopStream(id);
    // The batch's executions just changed status too.
    Promise.all([loadBatches(), loadExecutions()]).catch(report);
  }
}

/** Follow a running batch's Server-Sent Events. */
function followBatch(id, li) {
  state.followed.add(id);
  li.dataset.live = "true";
  const url = `/batches/${encodeURIComponent(id)}/events`;
  if (!sessionStorage.getItem(KEY_STORAGE)) {
    const source = new EventSource(url);
    source.addEventListener("progress", (e) => onBatchEvent(id, li, "progress", e.data));
    source.addEventListener("done", (e) => onBatchEvent(id, li, "done", e.data));
    // The list poll keeps the bar moving if the stream fails (EventSource retries on its own
    // while the server is reachable).
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) stopStream(id);
    };
    state.streams.set(id, { close: () => source.close() });
    return;
  }
  // EventSource cannot send an Authorization header: read the stream with fetch instead.
  const controller = new AbortController();
  state.streams.set(id, { close: () => controller.abort() });
  readEventStream(url, controller.signal, (event, data) => onBatchEvent(id, li, event, data))
    .catch(() => {})
    .finally(() => {
      if (!controller.signal.aborted) stopStream(id);
    });
}

async function readEventStream(url, signal, onEvent) {
  const response = await fetch(url, {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok || !response.body) throw new Error(`${url}: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length || event !== "message") onEvent(event, data.join("\n"));
      end = buffer.indexOf("\n\n");
    }
  }
}

function stopStream(id) {
  state.streams.get(id)?.close();
  state.streams.delete(id);
  const li = state.batches.get(id);
  if (li) li.dataset.live = "false";
}

function closeStreams() {
  for (const id of [...state.streams.keys()]) stopStream(id);
}

// ---------------------------------------------------------------------------------------------
// the refresh loop

function report(error) {
  if (error instanceof AuthError) return;
  showBanner(`Could not refresh: ${error.message}`);
}

async function refresh({ full = false } = {}) {
  if (state.busy) return;
  state.busy = true;
  try {
    const tasks = [loadExecutions(), loadBatches()];
    if (full || state.tick % HEALTH_EVERY === 0) tasks.push(loadHealth(), loadPrograms());
    const results = await Promise.allSettled(tasks);
    const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    const authProblem = failures.some((e) => e instanceof AuthError);
    const other = failures.find((e) => !(e instanceof AuthError));
    if (!authProblem) {
      const form = $("#key-form");
      if (!sessionStorage.getItem(KEY_STORAGE)) form.hidden = true;
      $("#key-message").textContent = "";
    }
    if (other) report(other);
    else showBanner(authProblem ? "Enter an API key to see this server's data." : null);
    if (!failures.length) $("#updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    document.body.dataset.loaded = "true";
  } finally {
    state.busy = false;
    state.tick += 1;
  }
}

function start() {
  setupKeyForm();
  setupExecutionTable();
  refresh({ full: true });
  setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
  window.addEventListener("pagehide", closeStreams);
}

start();
