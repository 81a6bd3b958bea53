// Backstream dashboard: live updates over Server-Sent Events, the action buttons, the submit form.
// Every URL comes from pathFor (routes.js): the page hands over its routes' paths by name.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUS_AFTER = {
  submitted: "queued", started: "running", completed: "completed", failed: "failed",
  retry_scheduled: "queued", released: "queued", requeued: "queued", cancelled: "cancelled",
};
const body = document.body;
// Sent with every state change: a cookie-signed request without it is refused (api/csrf.py).
const CSRF = { "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]')?.content || "" };

function flash(message) {
  const el = document.getElementById("flash");
  if (!el) return;
  el.textContent = message || "";
  el.hidden = !message;
}

function setProgress(container, progress) {
  const pct = Math.max(0, Math.min(progress, 1)) * 100;
  const bar = container.querySelector(".bar");
  bar.querySelector("span").style.width = pct.toFixed(1) + "%";
  bar.setAttribute("aria-valuenow", pct.toFixed(0));
  container.querySelector(".pct").textContent = pct.toFixed(0) + "%";
}

function setStatus(badge, status) {
  badge.className = "badge " + status;
  badge.textContent = status;
}

function showActions(scope, status) {
  scope.querySelector("button.cancel").hidden = !(status === "queued" || status === "running");
  scope.querySelector("button.retry").hidden = status !== "failed";
}

async function act(taskId, action) {
  const reply = await fetch(pathFor(action, { task_id: taskId }), {
    method: action === "retry" ? "POST" : "DELETE", credentials: "same-origin", headers: CSRF,
  });
  if (!reply.ok) {
    const problem = await reply.json().catch(() => ({ message: reply.statusText }));
    flash(action + " refused: " + (problem.message || reply.status));
    return null;
  }
  flash("");
  return reply.json();
}

// The fold of an event into what a row or the task page shows; returns the new status.
function apply(ev, view) {
  const status = STATUS_AFTER[ev.type] || view.status;
  if (ev.type === "progress" || ev.type === "job_progress") view.setProgress(ev.data.progress);
  if (ev.type === "job_progress" || ev.type === "fanned_out") view.setJob?.(ev.data);
  if (ev.type === "started" || ev.type === "requeued" || ev.type === "released" || ev.type === "retry_scheduled") {
    view.setProgress(0);
  }
  // Back in the queue: no attempt runs, so no worker (as the read model says; orchestrator/domain/state.py).
  if (ev.type === "requeued" || ev.type === "released" || ev.type === "retry_scheduled") view.setRun(ev.attempt, "");
  if (ev.type === "completed") view.setProgress(1);
  if (ev.type === "started") view.setRun(ev.attempt, ev.data.worker);
  view.setStatus(status);
  return status;
}

function listen(url, onEvent) {
  const source = new EventSource(url);
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.addEventListener("end", () => source.close());
  return source;
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d";
}

// --- the task table ---
function rowView(row) {
  return {
    status: row.dataset.status,
    setProgress: (p) => setProgress(row.querySelector("td.progress"), p),
    setRun: (attempt, worker) => {
      row.querySelector("td.attempt").textContent = attempt;
      row.querySelector("td.worker").textContent = worker || "";
    },
    setStatus: (s) => {
      row.dataset.status = s;
      setStatus(row.querySelector("td.status .badge"), s);
      showActions(row, s);
    },
    // A job's chunk count, once it fans out (streams.md, "Jobs").
    setJob: (data) => {
      if (data.chunks === undefined || row.querySelector("small.chunks")) return;
      const note = document.createElement("small");
      note.className = "chunks";
      note.textContent = "job of " + data.chunks + " chunks";
      row.cells[0].append(" ", note);
    },
  };
}

function newRow(ev) {
  const spec = ev.data.spec || {};
  const row = document.createElement("tr");
  row.dataset.task = ev.task_id;
  row.dataset.seq = "0";
  row.dataset.status = "queued";
  row.dataset.created = ev.time;
  row.innerHTML =
    '<td><a class="mono"></a></td><td class="status"><span class="badge queued">queued</span></td>' +
    '<td class="progress"><div class="bar" role="progressbar" aria-valuenow="0" aria-valuemin="0" ' +
    'aria-valuemax="100"><span style="width:0%"></span></div><small class="pct">0%</small></td>' +
    '<td class="symbol"></td><td class="strategy"></td><td class="attempt">0</td><td class="worker"></td>' +
    '<td class="age"></td><td class="actions"><button class="cancel">Cancel</button>' +
    '<button class="retry">Retry</button></td>';
  const link = row.querySelector("a");
  link.href = pathFor("task_page", { task_id: ev.task_id });
  link.textContent = ev.task_id.slice(0, 8);
  row.querySelector("td.symbol").textContent = spec.symbol || [].concat(spec.symbols || []).join(", ");
  row.querySelector("td.strategy").textContent = spec.strategy || "";
  row.querySelector("td.age").title = ev.time;
  return row;
}

function tasksPage() {
  const tbody = document.querySelector("#tasks tbody");
  const filter = body.dataset.filter;
  tbody.querySelectorAll("tr").forEach((row) => showActions(row, row.dataset.status));
  tbody.addEventListener("click", async (click) => {
    const button = click.target.closest("button");
    if (!button) return;
    button.disabled = true;
    await act(button.closest("tr").dataset.task, button.classList.contains("retry") ? "retry" : "cancel");
    button.disabled = false;
  });
  const tick = () => tbody.querySelectorAll("tr").forEach((row) => {
    row.querySelector("td.age").textContent = age(row.dataset.created);
  });
  tick();
  setInterval(tick, 1000);
  listen(pathFor("stream") + "?last_event_id=" + encodeURIComponent(body.dataset.since), (ev) => {
    let row = tbody.querySelector('tr[data-task="' + ev.task_id + '"]');
    if (!row) {
      if (ev.type !== "submitted" || (filter && filter !== "queued")) return;
      if (ev.data.spec && ev.data.spec.chunk) return; // a job's chunk: the list shows its job
      row = newRow(ev);
      tbody.prepend(row);
      document.querySelector("p.empty").hidden = true;
      tick();
    }
    if (ev.seq <= Number(row.dataset.seq)) return; // the row already shows it
    row.dataset.seq = ev.seq;
    apply(ev, rowView(row));
  });
}

// --- one task ---
function taskPage() {
  const taskId = body.dataset.task;
  const head = document.querySelector("section.task-head");
  const events = document.querySelector("#events tbody");
  let seq = Number(body.dataset.seq);
  const view = {
    status: body.dataset.status,
    setProgress: (p) => setProgress(document.getElementById("progress"), p),
    setRun: () => {},
    setStatus: (s) => { body.dataset.status = s; setStatus(document.getElementById("status"), s); showActions(head, s); },
    // A job's counts as its job_progress events tell them; a job that just fanned out is drawn anew.
    setJob: (data) => {
      const counts = document.getElementById("job-counts");
      if (!counts) { if (data.chunks !== undefined) setTimeout(() => location.reload(), 300); return; }
      if (data.done !== undefined) counts.querySelector(".done").textContent = data.done;
      if (data.failed !== undefined) counts.querySelector(".failed").textContent = data.failed;
    },
  };
  showActions(head, view.status);
  head.querySelector(".actions").addEventListener("click", async (click) => {
    const button = click.target.closest("button");
    if (!button) return;
    const retry = button.classList.contains("retry");
    if ((await act(taskId, retry ? "retry" : "cancel")) && retry) location.reload(); // follow the new run
  });
  if (TERMINAL.has(view.status) && view.status !== "failed") return;
  const stream = pathFor("task_stream", { task_id: taskId });
  listen(stream + "?last_event_id=" + encodeURIComponent(body.dataset.since), (ev) => {
    if (ev.seq <= seq) return;
    seq = ev.seq;
    const status = apply(ev, view);
    if (ev.type !== "progress") {
      const row = document.createElement("tr");
      const detail = Object.entries(ev.data).filter(([k]) => k !== "spec" && k !== "result")
        .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(", ");
      row.innerHTML = "<td></td><td class=mono></td><td><span></span></td><td></td><td></td>";
      const cells = row.querySelectorAll("td");
      cells[0].textContent = ev.seq;
      cells[1].textContent = ev.time;
      setStatus(cells[2].firstChild, ev.type);
      cells[3].textContent = ev.attempt;
      cells[4].textContent = detail;
      events.appendChild(row);
    }
    if (TERMINAL.has(status)) setTimeout(() => location.reload(), 300); // draw the result server-side
  });
}

// --- the submit form ---
function numberOrList(text) {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const values = parts.map((s) => (Number.isFinite(Number(s)) ? Number(s) : s));
  return parts.length === 1 && !text.includes(",") ? values[0] : values;
}

function submitPage() {
  const form = document.getElementById("submit-form");
  const strategy = form.elements.strategy;
  const showParams = () => form.querySelectorAll("fieldset.params").forEach((fs) => {
    fs.hidden = fs.dataset.strategy !== strategy.value;
    fs.disabled = fs.hidden;
  });
  strategy.addEventListener("change", showParams);
  showParams();
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    form.querySelectorAll("label.invalid").forEach((l) => l.classList.remove("invalid"));
    form.querySelectorAll(".error").forEach((el) => { el.textContent = ""; });
    const spec = { strategy: strategy.value, symbol: form.elements.symbol.value, params: {} };
    const fs = form.querySelector('fieldset[data-strategy="' + strategy.value + '"]');
    fs.querySelectorAll("input").forEach((input) => {
      spec.params[input.name.slice("param:".length)] = numberOrList(input.value);
    });
    for (const name of ["start", "end", "constraint"]) {
      if (form.elements[name].value) spec[name] = form.elements[name].value;
    }
    for (const name of ["cash", "commission", "commission_fixed", "spread", "slippage_bps"]) {
      const raw = form.elements[name].value;
      if (raw !== "") spec[name] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
    }
    // Position management: optional, a number or a comma-separated list to sweep.
    form.querySelectorAll("input[data-management]").forEach((input) => {
      if (input.value.trim() !== "") spec[input.name] = numberOrList(input.value);
    });
    spec.long_only = form.elements.long_only.checked;
    spec.objective = form.elements.objective.value;
    const reply = await fetch(pathFor("submit"), {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", ...CSRF }, body: JSON.stringify(spec),
    });
    const answer = await reply.json().catch(() => ({}));
    if (reply.status === 202) {
      location.href = pathFor("task_page", { task_id: answer.task_id });
      return;
    }
    const general = [];
    for (const problem of answer.fields || []) {
      const field = (problem.field || "").replace(/\[\d+\]$/, "");
      const label = form.querySelector('label[data-field="' + field + '"]') ||
        form.querySelector('label[data-field="' + field.split(".")[0] + '"]');
      if (label && !label.closest("[hidden]")) {
        label.classList.add("invalid");
        label.querySelector(".error").textContent = problem.message;
      } else {
        general.push((problem.field ? problem.field + ": " : "") + problem.message);
      }
    }
    const errors = document.getElementById("form-errors");
    errors.textContent = general.join("; ") || (answer.fields ? "" : answer.message || "submit failed");
    errors.hidden = !errors.textContent;
  });
}

({ tasks: tasksPage, task: taskPage, submit: submitPage })[body.dataset.page]?.();
