// Backstream results: a task's equity chart against buy-and-hold with drawdown and trades, a sweep's
// heatmap and full table, and the compare page. Everything is drawn in the browser from the JSON
// every client reads (GET /api/backtests/tasks/{id}/result), with the vendored uPlot (MIT). Every URL
// comes from pathFor (routes.js): the page hands over its routes' paths by name.
"use strict";
(() => {
  // Counts show whole units; every other number two decimals (api/dashboard/format.py WHOLE_METRICS agrees).
  const WHOLE = new Set([
    "num_trades", "duration_days", "max_drawdown_duration_days", "max_trade_duration_days", "size",
    "entry_bar", "exit_bar", "combinations",
  ]);
  const COLORS = ["#2d6cdf", "#e07b00", "#1f8a4c", "#9b3fb5"];
  const PAGE = 25;
  const CSRF = { "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]')?.content || "" };
  const dayFmt = (ts) => (ts == null ? "—" : new Date(ts * 1000).toISOString().slice(0, 10));

  function num(v, digits) {
    if (typeof v !== "number" || !Number.isFinite(v)) return v == null ? "—" : String(v);
    return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  const show = (name, v) => (typeof v === "number" ? num(v, WHOLE.has(name) ? 0 : 2) : v == null ? "—" : String(v));
  // Parameters as given (a threshold of 0.005 stays 0.005).
  const paramText = (v) => (typeof v === "number" ? String(v) : JSON.stringify(v));

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function getJSON(url) {
    const reply = await fetch(url, { credentials: "same-origin" });
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new Error(body.message || url + ": HTTP " + reply.status);
    return body;
  }

  // --- tables: right-aligned numbers, sortable by any column, paged ---
  // columns: [{key, label, numeric, text(row)}]; onRow(row, tr) may add to a row.
  function dataTable(columns, rows, { id, sortKey = null, desc = true, onRow = null } = {}) {
    const wrap = el("div", { class: "datatable", id });
    const table = el("table", { class: "data" });
    const head = el("tr");
    const tbody = el("tbody");
    const pager = el("div", { class: "pager" });
    const prev = el("button", { type: "button", class: "prev" }, "← previous");
    const next = el("button", { type: "button", class: "next" }, "next →");
    const where = el("span", { class: "where" });
    pager.append(prev, where, next);
    table.append(el("thead"), tbody);
    table.tHead.append(head);
    let page = 0;
    let order = rows.slice();
    const value = (row, key) => (typeof row[key] === "function" ? null : row[key]);
    function sortBy(key, descending) {
      sortKey = key;
      desc = descending;
      const sign = desc ? -1 : 1;
      order = rows.slice().sort((a, b) => {
        const x = value(a, key);
        const y = value(b, key);
        if (x == null || y == null) return x == null ? (y == null ? 0 : 1) : -1; // missing last
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
      page = 0;
      draw();
    }
    function draw() {
      head.querySelectorAll("th").forEach((th) => {
        th.dataset.sort = th.dataset.key === sortKey ? (desc ? "desc" : "asc") : "";
      });
      tbody.replaceChildren();
      const pages = Math.max(1, Math.ceil(order.length / PAGE));
      page = Math.min(page, pages - 1);
      for (const row of order.slice(page * PAGE, (page + 1) * PAGE)) {
        const tr = el("tr");
        for (const c of columns) {
          tr.append(el("td", c.numeric ? { class: "num" } : {}, c.text ? c.text(row) : show(c.key, row[c.key])));
        }
        if (onRow) onRow(row, tr);
        tbody.append(tr);
      }
      where.textContent = order.length
        ? `rows ${page * PAGE + 1}–${Math.min((page + 1) * PAGE, order.length)} of ${order.length}`
        : "no rows";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
      pager.hidden = order.length <= PAGE;
    }
    for (const c of columns) {
      const th = el("th", { "data-key": c.key, class: c.numeric ? "num sortable" : "sortable", title: "sort" }, c.label);
      th.addEventListener("click", () => sortBy(c.key, sortKey === c.key ? !desc : c.numeric));
      head.append(th);
    }
    if (onRow) head.append(el("th"));
    prev.addEventListener("click", () => { page -= 1; draw(); });
    next.addEventListener("click", () => { page += 1; draw(); });
    wrap.append(table, pager);
    if (sortKey) sortBy(sortKey, desc);
    else draw();
    return wrap;
  }

  // Every metric of a run, in a grid of name and value pairs (the task page's headline table grows into it).
  function metricsGrid(metrics) {
    const grid = el("div", { class: "metric-grid", id: "metrics-table" });
    for (const [k, v] of Object.entries(metrics)) {
      const item = el("div", { "data-metric": k });
      item.append(el("span", { class: "name" }, k), el("span", typeof v === "number" ? { class: "num" } : {}, show(k, v)));
      grid.append(item);
    }
    return grid;
  }

  // --- charts ---
  const moneyAxis = (u, ticks) => ticks.map((v) => (v == null ? "" : num(v, Math.abs(v) >= 100 ? 0 : 2)));

  // Log-scale ticks at 1, 2 and 5 of each decade (only powers of ten when those would crowd),
  // so the axis reads 5,000 / 10,000 / 20,000 instead of nine unlabeled lines per decade.
  function logSplits(u, axis, min, max) {
    const out = [];
    for (const steps of [[1, 2, 5], [1, 3], [1]]) {
      out.length = 0;
      for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e += 1) {
        for (const m of steps) {
          const v = m * 10 ** e;
          if (v >= min && v <= max) out.push(v);
        }
      }
      if (out.length <= Math.max(3, u.bbox.height / devicePixelRatio / 36)) break;
    }
    return out;
  }

  function chartWidth(node) {
    return Math.max(320, node.clientWidth || node.parentNode.clientWidth || 900);
  }

  // A line chart with a date axis: series = [{label, values, stroke, ...}]; returns the uPlot.
  function lineChart(node, times, series, { height, log = false, sync, yLabel, fill = false, percent = false }) {
    const xs = times.map((t) => Date.parse(t + "T00:00:00Z") / 1000);
    const unit = (v) => (v == null ? "—" : num(v, 2) + (percent ? " %" : ""));
    const opts = {
      width: chartWidth(node),
      height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: sync ? { sync: { key: sync } } : {},
      scales: { x: { time: true }, y: log ? { distr: 3, log: 10 } : {} },
      axes: [
        { grid: { stroke: "#eef0f3" } },
        {
          label: yLabel, size: 78, grid: { stroke: "#eef0f3" }, splits: log ? logSplits : undefined,
          filter: log ? (u, splits) => splits : undefined, // uPlot's log filter would drop 2 and 5
          values: percent ? (u, t) => t.map((v) => num(v, 0) + " %") : moneyAxis,
        },
      ],
      series: [
        { label: "date", value: (u, ts) => dayFmt(ts) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          width: s.width ?? 1.5,
          dash: s.dash,
          fill: fill ? s.fill : undefined,
          value: (u, v) => unit(v),
          ...(s.points ? { paths: () => null, points: { show: true, ...s.points } } : {}),
        })),
      ],
    };
    // The log scale needs positive values: a wiped-out account (equity 0) leaves a gap there.
    const data = [xs, ...series.map((s) => (log ? s.values.map((v) => (v != null && v > 0 ? v : null)) : s.values))];
    node.replaceChildren();
    const plot = new uPlot(opts, data, node);
    node.uplot = plot;
    return plot;
  }

  function onResize(plots) {
    window.addEventListener("resize", () => plots().forEach((p) => p && p.setSize({ width: chartWidth(p.root.parentNode), height: p.height })));
  }

  // The strategy's equity, buy-and-hold of the same cash from the first bar, entries and exits.
  function equitySeries(detail) {
    const curve = detail.equity_curve;
    const equity = curve.equity;
    const out = [{ label: "strategy", values: equity, stroke: COLORS[0] }];
    const start = equity.find((v) => v != null);
    const first = (curve.close || []).find((v) => v != null && v > 0);
    if (first && start != null) {
      out.push({
        label: "buy and hold", values: curve.close.map((v) => (v == null ? null : (start * v) / first)),
        stroke: "#59626e", width: 1.5, dash: [6, 3],
      });
    }
    const trades = detail.trades || {};
    const entries = new Array(equity.length).fill(null);
    const exits = new Array(equity.length).fill(null);
    (trades.entry_bar || []).forEach((b) => { entries[b] = equity[b]; });
    (trades.exit_bar || []).forEach((b) => { exits[b] = equity[b]; });
    // A reversal exits one trade and enters the next on the same bar: a ring for the entry
    // around a dot for the exit keeps both visible.
    out.push({ label: "entry", values: entries, stroke: "#1f8a4c", points: { size: 11, width: 2, fill: "rgba(0,0,0,0)" } });
    out.push({ label: "exit", values: exits, stroke: "#c23b3b", points: { size: 5, width: 0, fill: "#c23b3b" } });
    return out;
  }

  function equityFigure(detail, { title }) {
    const fig = el("div", { class: "figure" });
    const bar = el("div", { class: "toolbar" });
    bar.append(el("h2", {}, title));
    const toggle = el("label", { class: "inline" });
    const box = el("input", { type: "checkbox", id: "log-scale" });
    box.checked = true;
    toggle.append(box, document.createTextNode(" log scale"));
    bar.append(toggle);
    const eq = el("div", { class: "chart", id: "equity-chart" });
    const dd = el("div", { class: "chart", id: "drawdown-chart" });
    fig.append(bar, eq, el("h2", {}, "Drawdown"), dd);
    const curve = detail.equity_curve;
    let plots = [];
    const draw = () => {
      plots.forEach((p) => p.destroy());
      plots = [
        lineChart(eq, curve.time, equitySeries(detail), { height: 320, log: box.checked, sync: "equity", yLabel: "equity" }),
        lineChart(dd, curve.time, [{ label: "drawdown", values: curve.drawdown_pct, stroke: "#c23b3b", fill: "rgba(194,59,59,.18)" }],
          { height: 150, sync: "equity", fill: true, percent: true, yLabel: "drawdown" }),
      ];
    };
    box.addEventListener("change", draw);
    onResize(() => plots);
    return { fig, draw };
  }

  function tradesTable(trades) {
    const count = (trades.entry_bar || []).length;
    const rows = [];
    for (let i = 0; i < count; i += 1) {
      const row = {};
      for (const k of Object.keys(trades)) row[k] = trades[k][i];
      rows.push(row);
    }
    const cols = [
      ["entry_time", "entry", false], ["exit_time", "exit", false], ["size", "size", true],
      ["entry_price", "entry price", true], ["exit_price", "exit price", true], ["pnl", "P&L", true],
      ["commission", "commission", true], ["return_pct", "return %", true], ["duration_days", "days", true],
    ].filter(([k]) => k in trades).map(([key, label, numeric]) => ({ key, label, numeric }));
    return dataTable(cols, rows, { id: "trades" });
  }

  // --- a sweep: heatmap of any metric over two parameters, the full table ---
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // viridis
  function color(t) {
    const x = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2);
    const f = x - i;
    const c = STOPS[i].map((a, j) => Math.round(a + (STOPS[i + 1][j] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function heatmap(node, rows, { x, y, metric, name, fixed, best, onPick, readout }) {
    const keep = rows.filter((r) => Object.entries(fixed).every(([k, v]) => k === x || k === y || r.params[k] === v));
    const xs = [...new Set(keep.map((r) => r.params[x]))].sort((a, b) => a - b);
    const ys = [...new Set(keep.map((r) => r.params[y]))].sort((a, b) => a - b);
    const values = keep.map((r) => r[metric]).filter((v) => typeof v === "number" && Number.isFinite(v));
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const width = Math.max(320, node.clientWidth || 900);
    const left = 64;
    const top = 8;
    const cw = Math.max(3, Math.min(64, Math.floor((width - left - 90) / xs.length)));
    const ch = Math.max(3, Math.min(36, Math.floor(440 / ys.length)));
    const plotW = cw * xs.length;
    const plotH = ch * ys.length;
    const root = svg("svg", { width: left + plotW + 90, height: top + plotH + 44, class: "heatmap", role: "img" });
    const xi = new Map(xs.map((v, i) => [v, i]));
    const yi = new Map(ys.map((v, i) => [v, i]));
    for (const r of keep) {
      const v = r[metric];
      const ok = typeof v === "number" && Number.isFinite(v);
      const rect = svg("rect", {
        class: "cell" + (r === best ? " best" : ""),
        x: left + xi.get(r.params[x]) * cw, y: top + (ys.length - 1 - yi.get(r.params[y])) * ch,
        width: cw, height: ch, fill: ok ? color(hi > lo ? (v - lo) / (hi - lo) : 0.5) : "#e3e6ea",
        "data-x": r.params[x], "data-y": r.params[y], "data-value": ok ? v : "",
      });
      const label = Object.entries(r.params).map(([k, p]) => k + "=" + paramText(p)).join(", ") + ": " + name + " " + show(metric, v);
      rect.append(svg("title", {}, label));
      rect.addEventListener("mouseenter", () => { readout.textContent = label + " (click to open this run)"; });
      rect.addEventListener("click", () => onPick(r));
      root.append(rect);
    }
    // Axis labels, thinned so they never overlap.
    const xStep = Math.ceil(30 / cw);
    xs.forEach((v, i) => {
      if (i % xStep) return;
      root.append(svg("text", { x: left + i * cw + cw / 2, y: top + plotH + 14, "text-anchor": "middle" }, paramText(v)));
    });
    const yStep = Math.ceil(14 / ch);
    ys.forEach((v, i) => {
      if (i % yStep) return;
      root.append(svg("text", { x: left - 6, y: top + (ys.length - 1 - i) * ch + ch / 2 + 4, "text-anchor": "end" }, paramText(v)));
    });
    root.append(svg("text", { x: left + plotW / 2, y: top + plotH + 34, "text-anchor": "middle", class: "axis" }, x));
    root.append(svg("text", { x: 12, y: top + plotH / 2, "text-anchor": "middle", class: "axis", transform: `rotate(-90 12 ${top + plotH / 2})` }, y));
    // The color scale: high at the top.
    const gx = left + plotW + 16;
    const grad = svg("linearGradient", { id: "scale", x1: 0, y1: 1, x2: 0, y2: 0 });
    STOPS.forEach((_, i) => grad.append(svg("stop", { offset: i / (STOPS.length - 1), "stop-color": color(i / (STOPS.length - 1)) })));
    const defs = svg("defs");
    defs.append(grad);
    root.append(defs, svg("rect", { x: gx, y: top, width: 12, height: plotH, fill: "url(#scale)" }));
    root.append(svg("text", { x: gx + 16, y: top + 10 }, show(metric, hi)));
    root.append(svg("text", { x: gx + 16, y: top + plotH }, show(metric, lo)));
    node.replaceChildren(root);
  }

  // Opens one combination as a single run: an identical run already submitted (newest 500 tasks,
  // not failed or cancelled) is reused; otherwise the sweep's spec with these params is submitted.
  // A job's row names its `symbol` (a universe runs each symbol): the single run is on that one.
  async function openCombination(taskId, params, readout, symbol) {
    readout.textContent = "Opening " + Object.entries(params).map(([k, v]) => k + "=" + paramText(v)).join(", ") + "…";
    const canon = (value) => JSON.stringify(value, (k, v) => (v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v));
    const single = (spec) => {
      const s = { ...spec };
      ["objective", "constraint", "direction", "failure_tolerance", "symbols"].forEach((k) => delete s[k]);
      return s;
    };
    const task = await getJSON(pathFor("task", { task_id: taskId }));
    const spec = single({ ...task.spec, params, ...(symbol ? { symbol } : {}) });
    const key = canon(spec);
    const { tasks } = await getJSON(pathFor("tasks") + "?limit=500");
    const same = tasks.find((t) => t.status !== "failed" && t.status !== "cancelled" && canon(single(t.spec)) === key);
    if (same) {
      location.href = pathFor("task_page", { task_id: same.task_id });
      return;
    }
    const reply = await fetch(pathFor("submit"), {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json", ...CSRF },
      body: JSON.stringify(spec),
    });
    const answer = await reply.json().catch(() => ({}));
    if (reply.status !== 202) {
      readout.textContent = "Could not submit that run: " + (answer.message || reply.status);
      return;
    }
    location.href = pathFor("task_page", { task_id: answer.task_id });
  }

  function sweepSection(taskId, detail) {
    const section = el("div", { id: "sweep" });
    const rows = detail.table || [];
    if (!rows.length) {
      section.append(el("p", {}, "No combination made a trade."));
      return section;
    }
    const names = Object.keys(rows[0].params);
    const varying = names.filter((n) => new Set(rows.map((r) => r.params[n])).size > 1);
    // A job's rows also say their symbol and place in the grid (`combination`): not metrics.
    const own = new Set(["params", "objective", "symbol", "combination"]);
    const metrics = ["objective", ...Object.keys(rows[0]).filter((k) => !own.has(k))];
    const universe = Array.isArray(detail.symbols);
    const best = rows.find((r) => canonParams(r.params) === canonParams(detail.best?.params || {})
      && (!universe || r.symbol === detail.best?.symbol)) || rows[0];
    // A universe's heatmap is of the best symbol's rows (each symbol has the whole grid).
    const mapRows = universe ? rows.filter((r) => r.symbol === best.symbol) : rows;
    const readout = el("p", { class: "readout", id: "heatmap-readout" },
      "Click a cell to open that combination as a single run: an identical earlier run is reused, otherwise one is submitted.");
    section.append(el("h2", {}, `Sweep: ${num(detail.combinations, 0)} combinations of ${num(detail.grid_size, 0)}, ranked by ${detail.objective}`));
    if (universe) section.append(symbolsSection(taskId, detail, readout));
    if (varying.length >= 2) {
      const bar = el("div", { class: "controls" });
      const select = (label, id, options, chosen) => {
        const s = el("select", { id });
        for (const o of options) s.append(el("option", { value: o }, o === "objective" ? `objective (${detail.objective})` : o));
        s.value = chosen;
        const l = el("label", { class: "inline" }, label + " ");
        l.append(s);
        bar.append(l);
        return s;
      };
      const metric = select("color by", "heatmap-metric", metrics, "objective");
      const xSel = select("x", "heatmap-x", varying, varying[0]);
      const ySel = select("y", "heatmap-y", varying, varying[1]);
      const map = el("div", { id: "heatmap" });
      const fixedNote = el("p", { class: "note" });
      section.append(bar, map, readout, fixedNote);
      const draw = () => {
        if (xSel.value === ySel.value) ySel.value = varying.find((v) => v !== xSel.value);
        const fixed = Object.fromEntries(names.filter((n) => n !== xSel.value && n !== ySel.value).map((n) => [n, best.params[n]]));
        fixedNote.textContent = Object.keys(fixed).length
          ? "Other parameters held at the best combination's values: " + Object.entries(fixed).map(([k, v]) => k + "=" + paramText(v)).join(", ") + "."
          : "";
        if (universe) fixedNote.textContent += ` Rows of ${best.symbol}, the best symbol.`;
        heatmap(map, mapRows, {
          x: xSel.value, y: ySel.value, metric: metric.value, fixed, best, readout,
          name: metric.value === "objective" ? detail.objective : metric.value,
          onPick: (r) => openCombination(taskId, r.params, readout, r.symbol),
        });
      };
      [metric, xSel, ySel].forEach((s) => s.addEventListener("change", draw));
      requestAnimationFrame(draw);
    } else {
      section.append(readout);
    }
    section.append(el("h2", {}, "All combinations"));
    const flat = rows.map((r) => ({ ...r.params, ...r, _params: r.params }));
    const cols = [
      ...(universe ? [{ key: "symbol", label: "symbol", numeric: false }] : []),
      ...names.map((n) => ({ key: n, label: n, numeric: true, text: (r) => paramText(r[n]) })),
      ...metrics.map((m) => ({ key: m, label: m === "objective" ? `objective (${detail.objective})` : m.replace(/_/g, " "), numeric: true })),
    ];
    section.append(dataTable(cols, flat, {
      id: "sweep-table", sortKey: "objective", desc: true,
      onRow: openRunCell(taskId, readout),
    }));
    return section;
  }

  // A row's "open run" button: the row's combination (on its symbol) as a backtest of its own.
  function openRunCell(taskId, readout) {
    return (row, tr) => {
      const td = el("td");
      const open = el("button", { type: "button", class: "open" }, "open run");
      open.addEventListener("click", () => openCombination(taskId, row._params, readout, row.symbol));
      td.append(open);
      tr.append(td);
    };
  }

  // A universe's `symbols` table: each symbol's best row, best symbol first.
  function symbolsSection(taskId, detail, readout) {
    const box = el("div", { id: "symbols" });
    const rows = detail.symbols.map((r) => ({ ...r.params, ...r, _params: r.params }));
    const names = Object.keys(detail.symbols[0]?.params || {});
    const skip = new Set(["symbol", "params", "combinations"]);
    const metrics = Object.keys(detail.symbols[0] || {}).filter((k) => !skip.has(k));
    const cols = [
      { key: "symbol", label: "symbol", numeric: false },
      ...names.map((n) => ({ key: n, label: n, numeric: true, text: (r) => paramText(r[n]) })),
      ...metrics.map((m) => ({ key: m, label: m === "objective" ? `objective (${detail.objective})` : m.replace(/_/g, " "), numeric: true })),
      { key: "combinations", label: "combinations", numeric: true },
    ];
    box.append(el("h2", {}, `Symbols: the best combination of each of ${rows.length}`));
    box.append(dataTable(cols, rows, {
      id: "symbols-table", sortKey: "objective", desc: true,
      onRow: openRunCell(taskId, readout),
    }));
    return box;
  }

  function canonParams(p) {
    return JSON.stringify(Object.entries(p).sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  // --- pages ---
  function downloads(taskId, result) {
    // Every table of the result, in each format the API serves (GET …/result?table=&format=).
    const tables = (result.kind === "sweep" ? ["sweep"] : []).concat(Array.isArray(result.symbols) ? ["symbols"] : [], ["equity", "trades"]);
    const box = el("p", { id: "downloads", class: "note" }, "Download: ");
    const base = pathFor("task_result", { task_id: taskId });
    box.append(el("a", { href: base, download: taskId + ".json" }, "full result (JSON)"));
    for (const table of tables) {
      box.append(" · " + table + ": ");
      ["csv", "parquet", "json"].forEach((format, k) => {
        if (k) box.append(", ");
        const name = taskId + "-" + table + "." + format;
        box.append(el("a", { href: base + "?table=" + table + "&format=" + format, download: name }, format));
      });
    }
    return box;
  }

  async function taskResult(section) {
    const taskId = document.body.dataset.task;
    let result;
    try {
      result = await getJSON(pathFor("task_result", { task_id: taskId }));
    } catch (error) {
      section.replaceChildren(el("p", { class: "flash" }, "The result could not be read: " + error.message));
      return;
    }
    const detail = result.kind === "sweep" ? result.best || {} : result;
    section.replaceChildren(downloads(taskId, result));
    if (detail.metrics) {
      const box = document.getElementById("metrics");
      box.replaceChildren(metricsGrid(detail.metrics));
      box.parentNode.classList.add("wide");
    }
    if (result.kind === "sweep") section.append(sweepSection(taskId, result));
    const draws = [];
    if (detail.equity_curve) {
      const title = result.kind === "sweep"
        ? "Best combination (" + Object.entries(detail.params || {}).map(([k, v]) => k + "=" + paramText(v)).join(", ") + ") against buy and hold"
        : "Equity against buy and hold";
      const { fig, draw } = equityFigure(detail, { title });
      section.append(fig);
      draws.push(draw);
    }
    if (detail.trades) {
      section.append(el("h2", {}, `Trades (${num((detail.trades.entry_bar || []).length, 0)})`), tradesTable(detail.trades));
    }
    draws.forEach((d) => d());
  }

  async function comparePage(section) {
    const ids = section.dataset.ids.split(",");
    let runs;
    try {
      runs = await Promise.all(ids.map(async (id) => {
        const [task, result] = await Promise.all([
          getJSON(pathFor("task", { task_id: id })), getJSON(pathFor("task_result", { task_id: id })),
        ]);
        const detail = result.kind === "sweep" ? result.best || {} : result;
        const params = Object.entries(detail.params || {}).map(([k, v]) => k + "=" + paramText(v)).join(", ");
        return { id, task, detail, label: `${task.spec.strategy} ${task.spec.symbol} ${params} (${id.slice(0, 8)})` };
      }));
    } catch (error) {
      section.replaceChildren(el("p", { class: "flash" }, "A result could not be read: " + error.message));
      return;
    }
    section.replaceChildren(el("h2", {}, "Equity"));
    // One date axis for all: the union of their bars; a run without a bar on a date leaves a gap.
    const times = [...new Set(runs.flatMap((r) => r.detail.equity_curve.time))].sort();
    const align = (r, field) => {
      const at = new Map(r.detail.equity_curve.time.map((t, i) => [t, r.detail.equity_curve[field][i]]));
      return times.map((t) => (at.has(t) ? at.get(t) : null));
    };
    const eq = el("div", { class: "chart", id: "compare-equity" });
    const dd = el("div", { class: "chart", id: "compare-drawdown" });
    const legend = (r, i) => ({ label: r.label, values: null, stroke: COLORS[i % COLORS.length] });
    section.append(eq, el("h2", {}, "Drawdown"), dd);
    const plots = [
      lineChart(eq, times, runs.map((r, i) => ({ ...legend(r, i), values: align(r, "equity") })), { height: 340, log: true, sync: "compare", yLabel: "equity (log)" }),
      lineChart(dd, times, runs.map((r, i) => ({ ...legend(r, i), values: align(r, "drawdown_pct") })), { height: 170, sync: "compare", percent: true, yLabel: "drawdown" }),
    ];
    onResize(() => plots);
    // Metrics side by side: one row per metric, one column per run.
    const names = [...new Set(runs.flatMap((r) => Object.keys(r.detail.metrics || {})))];
    const table = el("table", { class: "data", id: "compare-metrics" });
    const head = el("tr");
    head.append(el("th", {}, "metric"));
    runs.forEach((r, i) => {
      const th = el("th", { class: "num" });
      const link = el("a", { href: pathFor("task_page", { task_id: r.id }), style: "color:" + COLORS[i % COLORS.length] }, r.label);
      th.append(link);
      head.append(th);
    });
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const name of names) {
      const tr = el("tr");
      tr.append(el("th", {}, name));
      runs.forEach((r) => {
        const v = (r.detail.metrics || {})[name];
        tr.append(el("td", { class: "num" }, show(name, v)));
      });
      table.tBodies[0].append(tr);
    }
    section.append(el("h2", {}, "Metrics"), table);
  }

  // Compare picker: at most four at once.
  const picker = document.getElementById("compare-picker");
  if (picker) {
    const boxes = [...picker.querySelectorAll("input[type=checkbox]")];
    const limit = () => {
      const n = boxes.filter((b) => b.checked).length;
      boxes.forEach((b) => { b.disabled = !b.checked && n >= 4; });
    };
    boxes.forEach((b) => b.addEventListener("change", limit));
    limit();
  }
  const result = document.getElementById("result");
  if (result) taskResult(result);
  const compare = document.getElementById("compare");
  if (compare) comparePage(compare);
})();
