/* pagewalk view: draws window.PAGEWALK_RUN (written by pagewalk/view/model.py).
 *
 * Everything is local: this file, data.js and plotly.min.js come from the same place as
 * the page; nothing is fetched from anywhere else. Text from the run is always set with
 * textContent, never parsed as HTML.
 */
"use strict";
(function () {
  const RUN = window.PAGEWALK_RUN;
  const PAGE = 4096n;
  const ui = { state: 0, process: null, view: "status" };
  const stateOfStep = new Map(RUN.states.map((s, i) => [s.after, i]));
  const seriesOfStep = new Map([[-1, 0]]);
  RUN.steps.forEach((step, i) => { if (i + 1 < RUN.series.length) seriesOfStep.set(step.index, i + 1); });

  // -- small DOM helpers ------------------------------------------------------------------
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const $ = (sel) => document.querySelector(sel);
  const hex = (n) => "0x" + Number(n).toString(16);
  const kb = (n) => (n === undefined || n === null) ? "–" : Number(n).toLocaleString("en-US") + " kB";
  function bytes(n) {
    const units = [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]];
    for (const [size, name] of units) if (n >= size) return +(n / size).toFixed(2) + " " + name;
    return n + " B";
  }
  const kindClass = (kind) => "badge kind-" + String(kind).split(" ")[0];

  // -- header and timeline ----------------------------------------------------------------
  function header() {
    const sc = RUN.scenario;
    $("#scenario-name").textContent = sc.name;
    $("#scenario-description").textContent = sc.description || "";
    document.title = "pagewalk: " + sc.name;
    const sys = sc.system;
    const chips = [sys.ram + " RAM", sys.paging + "-level paging", sys.pti ? "PTI" : "no PTI",
      sys.pcid ? "PCID" : "no PCID"];
    for (const [path, value] of Object.entries(sys.sysfs)) chips.push(path.split("/").slice(-2).join("/") + "=" + value);
    $("#machine").replaceChildren(...chips.map((c) => h("span", { class: "chip" }, c)));
    if (RUN.failed) {
      $("#main").prepend(h("div", { class: "error-banner", id: "failed" },
        "The run stopped at step " + RUN.failed.step + ": " + RUN.failed.message));
    }
  }

  function timeline() {
    const items = [h("li", { class: "start", data: { after: -1 } },
      h("span", { class: "num" }, ""), h("span", {}, h("span", { class: "kind" }, "start"),
        h("span", { class: "proc" }, "main, the start image")))];
    for (const step of RUN.steps) {
      const outcomeClass = step.outcome === "failed" ? "failed" : (step.outcome !== "ok" ? "expected" : "");
      items.push(h("li", { class: step.kind === "measure" ? "measure" : "", data: { after: step.index } },
        h("span", { class: "num" }, "#" + step.index),
        h("span", {}, h("span", { class: "kind" }, step.kind),
          h("span", { class: "proc" }, step.process)),
        step.text ? h("span", { class: "text" }, step.text) : null,
        step.outcome !== "ok" ? h("span", { class: "outcome " + outcomeClass },
          step.outcome === "failed" ? step.error : step.outcome) : null));
    }
    for (const li of items) {
      const after = Number(li.dataset.after);
      if (stateOfStep.has(after)) {
        li.classList.add("has-state");
        li.addEventListener("click", () => select(stateOfStep.get(after)));
      }
    }
    $("#timeline").replaceChildren(...items);
  }

  // -- selection --------------------------------------------------------------------------
  function current() { return RUN.states[ui.state]; }

  function select(index, process) {
    ui.state = index;
    const st = current();
    const names = Object.keys(st.processes);
    if (process && names.includes(process)) ui.process = process;
    if (!names.includes(ui.process)) ui.process = names[0] || null;
    for (const li of document.querySelectorAll("#timeline li")) {
      li.classList.toggle("selected", Number(li.dataset.after) === st.after);
    }
    const step = RUN.steps.find((s) => s.index === st.after);
    $("#state-title").textContent = st.after < 0 ? "At the start" :
      "After step #" + st.after + " (" + step.kind + (st.label ? " " + st.label : "") + ")";
    tabs();
    drawProcess();
  }

  function tabs() {
    const names = Object.keys(current().processes);
    $("#process-tabs").replaceChildren(...names.map((name) => h("button", {
      type: "button", class: name === ui.process ? "active" : "", data: { process: name },
      onclick: () => { ui.process = name; tabs(); drawProcess(); },
    }, name + " (" + current().processes[name].pid + ")")));
  }

  function drawProcess() {
    for (const span of document.querySelectorAll(".proc-name")) span.textContent = ui.process || "";
    summary();
    chart();
    systemChart();
    vmas();
    tree();
    cost();
    views();
  }

  // -- figures ----------------------------------------------------------------------------
  function proc() { return ui.process ? current().processes[ui.process] : null; }

  function summary() {
    const p = proc();
    if (!p) { $("#summary").replaceChildren(h("div", { class: "card" }, "no process is running")); return; }
    const point = RUN.series[seriesOfStep.get(current().after) ?? 0].processes[ui.process] || {};
    const c = p.cost;
    const tables = Object.values(c.tables).reduce((a, b) => a + b, 0);
    const cards = [
      ["VmRSS", kb(p.status.VmRSS), "RssAnon " + kb(p.status.RssAnon)],
      ["VmPTE", kb(p.status.VmPTE), c.agrees_with_VmPTE ? "= tables walked" : "differs from the walk!", c.agrees_with_VmPTE ? "ok" : "bad"],
      ["AnonHugePages", kb(point.AnonHugePages), "PMD-mapped THPs"],
      ["HugetlbPages", kb(p.status.HugetlbPages), ""],
      ["page-table pages", tables, "incl. PGD " + c.tables.pgd],
      ["VmSize", kb(p.status.VmSize), p.vmas.length + " VMAs"],
    ];
    $("#summary").replaceChildren(...cards.map(([label, value, note, cls]) =>
      h("div", { class: "card " + (cls || ""), data: { field: label } }, h("div", { class: "label" }, label),
        h("div", { class: "value" }, value), h("div", { class: "note" }, note))));
  }

  function axisTicks() {
    const text = ["start"].concat(RUN.steps.slice(0, RUN.series.length - 1).map((s) => "#" + s.index + " " + s.kind));
    return { tickvals: text.map((_, i) => i), ticktext: text };
  }

  function stepShapes(rows) {
    const shapes = [];
    RUN.steps.forEach((s, i) => {
      if (s.kind === "measure" && i + 1 < RUN.series.length) {
        shapes.push({ type: "line", xref: "x", yref: "paper", x0: i + 1, x1: i + 1, y0: 0, y1: 1,
          line: { color: "#2e7d4f", width: 1, dash: "dot" } });
      }
    });
    const at = seriesOfStep.get(current().after) ?? 0;
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
      line: { color: "#2f6fde", width: 2 } });
    return shapes;
  }

  function plot(div, traces, layout) {
    if (typeof Plotly === "undefined") { div.textContent = "charts unavailable (plotly.min.js missing)"; return; }
    Plotly.react(div, traces, layout, { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] });
    if (!div._pagewalkClick) {
      div._pagewalkClick = true;
      div.on("plotly_click", (ev) => {
        const x = ev.points && ev.points.length ? Math.round(ev.points[0].x) : null;
        if (x === null) return;
        const after = x === 0 ? -1 : RUN.steps[x - 1].index;
        if (stateOfStep.has(after)) select(stateOfStep.get(after));
      });
    }
  }

  function chart() {
    const name = ui.process;
    const xs = RUN.series.map((_, i) => i);
    const field = (key) => RUN.series.map((pt) => (pt.processes[name] || {})[key] ?? null);
    const line = (key, axis, color) => ({ x: xs, y: field(key), name: key, yaxis: axis,
      mode: "lines+markers", line: { shape: "hv", color }, connectgaps: false });
    const traces = [line("VmRSS", "y", "#1d2330"), line("RssAnon", "y", "#2f6fde"),
      line("RssFile", "y", "#8a5cd1"), line("HugetlbPages", "y", "#b5561b"),
      line("VmPTE", "y2", "#c0362c"), line("AnonHugePages", "y3", "#d9822b")];
    const ticks = axisTicks();
    plot($("#chart"), traces, {
      margin: { l: 70, r: 20, t: 30, b: 70 }, showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      grid: { rows: 3, columns: 1, pattern: "coupled", roworder: "top to bottom" },
      xaxis: { tickvals: ticks.tickvals, ticktext: ticks.ticktext, tickangle: -30 },
      yaxis: { title: { text: "RSS (kB)" }, rangemode: "tozero" },
      yaxis2: { title: { text: "VmPTE (kB)" }, rangemode: "tozero" },
      yaxis3: { title: { text: "THP (kB)" }, rangemode: "tozero" },
      shapes: stepShapes(), font: { family: "system-ui, sans-serif", size: 12 },
      paper_bgcolor: "#ffffff", plot_bgcolor: "#fbfcfd",
    });
  }

  function systemChart() {
    const xs = RUN.series.map((_, i) => i);
    const keys = ["thp_fault_alloc", "thp_fault_fallback", "thp_split_pmd", "thp_collapse_alloc"];
    const traces = keys.map((key) => ({ x: xs, y: RUN.series.map((pt) => pt.system[key]), name: key,
      mode: "lines", line: { shape: "hv" } }));
    traces.push({ x: xs, y: RUN.series.map((pt) => pt.system.PageTables), name: "PageTables (kB)",
      yaxis: "y2", mode: "lines", line: { shape: "hv", dash: "dash", color: "#c0362c" } });
    const ticks = axisTicks();
    plot($("#system-chart"), traces, {
      margin: { l: 70, r: 70, t: 30, b: 60 },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { tickvals: ticks.tickvals, ticktext: ticks.ticktext, tickangle: -30 },
      yaxis: { title: { text: "events" }, rangemode: "tozero" },
      yaxis2: { title: { text: "kB" }, overlaying: "y", side: "right", rangemode: "tozero" },
      shapes: stepShapes(), font: { family: "system-ui, sans-serif", size: 12 },
    });
  }

  // -- VMAs -------------------------------------------------------------------------------
  function vmas() {
    const p = proc();
    const head = h("tr", {}, ["start", "end", "size", "perms", "kind", "VmFlags", "name"].map((t) => h("th", {}, t)));
    const rows = p ? p.vmas.map((v) => h("tr", { class: "clickable", data: { start: v.start },
      onclick: () => reveal(ui.process, v.start) },
    h("td", { class: "mono" }, v.start), h("td", { class: "mono" }, v.end), h("td", { class: "num" }, bytes(v.size)),
    h("td", { class: "mono" }, v.perms), h("td", {}, v.kind), h("td", { class: "mono" }, v.flags),
    h("td", { class: "mono" }, v.name))) : [];
    $("#vmas").replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
  }

  // -- the page-table tree ----------------------------------------------------------------
  function tree() {
    const p = proc();
    if (!p) { $("#tree").replaceChildren(); return; }
    const root = tableNode(p.tree, null, 0n);
    root.open = true;
    fill(root);
    $("#tree").replaceChildren(root);
  }

  /* The "shared" badge and, per other process, a link to where it maps the same frame
   * (``k`` pages into a run: runs are linear in the other process too). */
  function sharedLinks(shared, k = 0) {
    if (!shared) return [];
    return [h("span", { class: "badge shared" }, "shared")].concat(Object.entries(shared).map(([other, first]) => {
      const va = "0x" + (BigInt(first) + BigInt(k) * PAGE).toString(16);
      return h("a", { class: "shared-link", data: { process: other, va }, title: "the same frame in " + other + " at " + va,
        onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); reveal(other, va); } }, "↔ " + other + " " + va);
    }));
  }

  function tableNode(node, entry, base) {
    const span = entry ? (1n << BigInt(node.shift + 9)) : (1n << 48n);
    const label = entry ? [h("span", { class: "idx" }, "[" + entry.i + "] "), h("span", { class: "va" }, entry.va), " → "] : [];
    const summaryChildren = label.concat([
      h("span", { class: "lvl" }, node.level), " table (" + node.linux + ") at " + node.paddr + " ",
      h("span", { class: "used" }, "(" + node.used + " of " + (entry ? 512 : 256) + " entries used)"),
      entry ? h("span", { class: "flags" }, "  " + entry.f) : null,
      !entry && node.pti_user_pgd ? h("span", { class: "used" }, "  PTI user PGD at pfn " + hex(node.pti_user_pgd)) : null,
    ]);
    const details = h("details", { class: "pt-node", data: { va: "0x" + base.toString(16), span: span.toString(), level: node.level } },
      h("summary", {}, summaryChildren));
    details._node = node;
    details.addEventListener("toggle", () => { if (details.open) fill(details); });
    return details;
  }

  function fill(details) {
    if (details._filled) return;
    details._filled = true;
    const node = details._node;
    const children = [];
    for (const e of node.entries || []) {
      if (e.t === "table") children.push(tableNode(e.child, e, BigInt(e.va)));
      else children.push(hugeLeaf(e, node.shift));
    }
    for (const run of node.runs || []) children.push(run.n === 1 ? pageLeaf(run, 0) : runNode(run));
    if (!children.length) children.push(h("div", { class: "leaf used" }, "(no entries)"));
    details.append(...children);
  }

  function hugeLeaf(e, shift) {
    return h("div", { class: "leaf huge-leaf", data: { va: e.va, span: (1n << BigInt(shift)).toString() } },
      h("span", { class: "idx" }, "[" + e.i + "] "), h("span", { class: "va" }, e.va), " ",
      h("span", { class: "badge huge" }, e.size), h("span", { class: kindClass(e.kind) }, e.kind),
      fileOf(e, 0),
      " → frame " + hex(e.pfn * 4096) + "  ", h("span", { class: "flags" }, e.f),
      e.deposit !== undefined ? h("span", { class: "deposit" }, "  deposited PTE table pfn " + hex(e.deposit) + " (in VmPTE)") : null,
      sharedLinks(e.shared));
  }

  function pageLeaf(run, k) {
    const va = BigInt(run.va) + BigInt(k) * PAGE;
    const pfn = run.pfn + k * run.step;
    return h("div", { class: "leaf page", data: { va: "0x" + va.toString(16), span: "4096" } },
      h("span", { class: "idx" }, "[" + (run.i + k) + "] "), h("span", { class: "va" }, "0x" + va.toString(16)), " ",
      h("span", { class: kindClass(run.kind) }, run.kind), " → frame " + hex(pfn * 4096) + "  ",
      fileOf(run, k), h("span", { class: "flags" }, run.f), sharedLinks(run.shared, k));
  }

  // a page-cache page: its file and offset (page->mapping, page->index)
  function fileOf(item, k) {
    if (item.file === undefined) return null;
    const index = item.index + (k || 0);
    return h("span", { class: "file" }, item.file + " @ " + hex(index * 4096) + "  ");
  }

  function runNode(run) {
    const last = BigInt(run.va) + BigInt(run.n - 1) * PAGE;
    const frames = run.step ? hex(run.pfn * 4096) + "–" + hex((run.pfn + run.n - 1) * 4096) : hex(run.pfn * 4096) + " (every entry)";
    const details = h("details", { class: "run", data: { va: run.va, span: (BigInt(run.n) * PAGE).toString() } },
      h("summary", {}, h("span", { class: "idx" }, "[" + run.i + "–" + (run.i + run.n - 1) + "] "),
        h("span", { class: "va" }, run.va + "–0x" + last.toString(16)), " " + run.n + " × 4K ",
        h("span", { class: kindClass(run.kind) }, run.kind), " → frames " + frames + "  ",
        fileOf(run, 0), h("span", { class: "flags" }, run.f), sharedLinks(run.shared)));
    details.addEventListener("toggle", () => {
      if (!details.open || details._filled) return;
      details._filled = true;
      for (let k = 0; k < run.n; k++) details.append(pageLeaf(run, k));
    });
    return details;
  }

  function contains(node, va) {
    if (!node.dataset || node.dataset.va === undefined) return false;
    const start = BigInt(node.dataset.va);
    return start <= va && va < start + BigInt(node.dataset.span);
  }

  /* Open the tree of ``process`` down to the entry that maps ``vaHex`` and highlight it. */
  function reveal(process, vaHex) {
    if (process !== ui.process) { ui.process = process; tabs(); drawProcess(); }
    const va = BigInt(vaHex);
    let node = $("#tree > details");
    let found = node;
    while (node && node.tagName === "DETAILS") {
      node.open = true;
      if (node._node) fill(node);
      node.dispatchEvent(new Event("toggle"));
      const next = Array.from(node.children).find((child) => child.tagName !== "SUMMARY" && contains(child, va));
      if (!next) break;
      found = next;
      node = next;
    }
    for (const old of document.querySelectorAll(".tree .highlight")) old.classList.remove("highlight");
    const target = found.tagName === "DETAILS" ? found.querySelector(":scope > summary") : found;
    target.classList.add("highlight");
    target.scrollIntoView({ block: "center" });
    const mapped = found.classList.contains("leaf");
    $("#goto-result").textContent = mapped ? "" : "not mapped: the walk stops at the highlighted entry";
    return target;
  }

  function gotoAddress(ev) {
    ev.preventDefault();
    const text = $("#goto").value.trim();
    let va;
    try { va = BigInt(text); } catch (err) { va = null; }
    if (va === null || va < 0n || va >= (1n << 64n)) {
      $("#goto-result").textContent = "not an address: " + text;
      return;
    }
    reveal(ui.process, "0x" + va.toString(16));
  }

  /* Open (or close) every table node; runs of pages stay closed. */
  function setAll(open) {
    if (!open) {
      for (const d of document.querySelectorAll("#tree details")) d.open = false;
      return;
    }
    let closed = document.querySelectorAll("#tree details.pt-node:not([open])");
    while (closed.length) {
      for (const d of closed) { d.open = true; fill(d); }
      closed = document.querySelectorAll("#tree details.pt-node:not([open])");
    }
  }

  // -- cost -------------------------------------------------------------------------------
  function cost() {
    const p = proc();
    if (!p) { $("#cost").replaceChildren(); return; }
    const c = p.cost;
    const levels = h("table", { class: "grid", id: "cost-levels" },
      h("thead", {}, h("tr", {}, ["tables", "count", "bytes", "in VmPTE"].map((t) => h("th", {}, t)))),
      h("tbody", {}, Object.entries(c.tables).map(([name, count]) => h("tr", {},
        h("td", {}, name === "deposited" ? "deposited PTE (under huge PMDs)" : name),
        h("td", { class: "num" }, count), h("td", { class: "num" }, bytes(count * 4096)),
        h("td", {}, name === "pgd" || name === "p4d" ? "no" : "yes")))));
    const alt = h("table", { class: "grid", id: "cost-alternatives" },
      h("thead", {}, h("tr", {}, ["pages of", "pages", "maps", "PUD", "PMD", "PTE", "VmPTE", "as THP"].map((t) => h("th", {}, t)))),
      h("tbody", {}, c.alternatives.map((a) => h("tr", {},
        h("td", {}, bytes(a.page_size)), h("td", { class: "num" }, a.pages.toLocaleString("en-US")),
        h("td", { class: "num" }, bytes(a.mapped_bytes)), h("td", { class: "num" }, a.tables.pud),
        h("td", { class: "num" }, a.tables.pmd), h("td", { class: "num" }, a.tables.pte),
        h("td", { class: "num" }, kb(a.vmpte_bytes / 1024)),
        h("td", { class: "num" }, a.vmpte_thp_bytes === null ? "" : kb(a.vmpte_thp_bytes / 1024))))));
    const leaves = Object.entries(c.leaves).filter(([, n]) => n).map(([size, n]) => n.toLocaleString("en-US") + " × " + size).join(", ") || "nothing";
    $("#cost").replaceChildren(h("div", { class: "cost-grid" },
      h("div", {}, h("p", {}, "Tables walked from the PGD: " + kb(c.vmpte_counted_bytes / 1024) + " counted, kernel's VmPTE " +
        kb(c.VmPTE_bytes / 1024) + (c.agrees_with_VmPTE ? " (agrees)" : " (DIFFERS)")), levels),
      h("div", {}, h("p", {}, "Present: " + leaves + " = " + bytes(c.footprint_bytes) + ". The same footprint with one page size:"), alt)));
  }

  // -- /proc views ------------------------------------------------------------------------
  function views() {
    let index = ui.state;
    while (index >= 0 && !RUN.states[index].views) index--;
    const tabsNode = $("#view-tabs");
    if (index < 0) {
      $("#views-at").textContent = "(recorded at each measure; none yet)";
      tabsNode.replaceChildren();
      $("#view-text").textContent = "";
      return;
    }
    const st = RUN.states[index];
    $("#views-at").textContent = "at measure " + st.label + " (step #" + st.after + ")";
    const paths = Object.keys(st.views).filter((p) => !p.startsWith("/proc/") || p.split("/").length === 3 ||
      p.startsWith("/proc/" + ui.process + "/"));
    const short = (p) => p.startsWith("/proc/" + ui.process + "/") ? p.split("/").pop() : p;
    if (!paths.some((p) => short(p) === ui.view)) ui.view = paths.includes("/proc/" + ui.process + "/status") ? "status" : short(paths[0]);
    tabsNode.replaceChildren(...paths.map((p) => h("button", { type: "button", class: short(p) === ui.view ? "active" : "",
      data: { view: p }, onclick: () => { ui.view = short(p); views(); } }, p)));
    const path = paths.find((p) => short(p) === ui.view);
    $("#view-text").textContent = st.views[path];
  }

  // -- start --------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    header();
    timeline();
    $("#expand-all").addEventListener("click", () => setAll(true));
    $("#collapse-all").addEventListener("click", () => setAll(false));
    $("#goto-form").addEventListener("submit", gotoAddress);
    select(RUN.states.length - 1);
    document.body.dataset.ready = "1";
  });
  window.pagewalkView = { reveal, select, ui };
})();
