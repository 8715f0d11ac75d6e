// report.html's behaviour: sortable tables, and for a loop the candidate explorer (filters,
// a detail panel with code, reason and lineage). Model-written text is only ever assigned to
// textContent, never parsed as HTML.
(function () {
  "use strict";

  function sortValue(cell) {
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    if (raw === "") return null;
    const n = Number(raw);
    return Number.isNaN(n) ? raw.toLowerCase() : n;
  }

  function compare(a, b) {
    if (a === null || b === null) return a === b ? 0 : a === null ? 1 : -1; // blanks last
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }

  function makeSortable(table) {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach(function (th, col) {
      th.setAttribute("aria-sort", "none");
      th.title = "Sort by " + th.textContent;
      th.addEventListener("click", function () {
        const descending = th.getAttribute("aria-sort") === "ascending";
        heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort(function (r1, r2) {
          const a = sortValue(r1.cells[col]);
          const b = sortValue(r2.cells[col]);
          const c = compare(a, b);
          return descending && a !== null && b !== null ? -c : c; // blanks last either way
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  const blob = document.getElementById("candidates-data");
  const candidates = blob ? JSON.parse(blob.textContent) : [];
  const byId = new Map();
  const children = new Map();
  candidates.forEach(function (c) { byId.set(c.id, c); });
  candidates.forEach(function (c) {
    c.parent_ids.forEach(function (p) {
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(c.id);
    });
  });

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (digits !== undefined) return value.toFixed(digits);
    if (typeof value === "number" && Math.abs(value) >= 1000) {
      return String(Math.round(value)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    }
    return String(value);
  }

  const COLUMNS = [
    ["id", "id", undefined, true], ["cycle", "cycle", undefined, true],
    ["status", "status", undefined, false], ["accuracy", "accuracy", 3, true],
    ["novelty", "novelty", 3, true], ["params", "parameters", undefined, true],
    ["selected", "selected", undefined, false], ["parent_ids", "parents", undefined, false],
  ];

  function cell(tr, c, column) {
    const td = document.createElement("td");
    const value = c[column[0]];
    if (column[0] === "parent_ids") {
      td.textContent = value.length ? value.map(function (p) { return "#" + p; }).join(" ") : "–";
      td.dataset.value = String(value.length);
    } else {
      td.textContent = fmt(value, column[2]);
      if (column[3]) td.className = "num";
      td.dataset.value = value === null ? "" : typeof value === "boolean" ? (value ? "1" : "0")
        : String(value);
    }
    tr.appendChild(td);
  }

  function buildTable(table) {
    const body = table.tBodies[0];
    candidates.forEach(function (c) {
      const tr = document.createElement("tr");
      tr.dataset.id = String(c.id);
      tr.tabIndex = 0;
      COLUMNS.forEach(function (column) { cell(tr, c, column); });
      tr.addEventListener("click", function () { show(c.id, true); });
      tr.addEventListener("keydown", function (e) { if (e.key === "Enter") show(c.id, true); });
      body.appendChild(tr);
    });
  }

  function applyFilters() {
    const status = document.getElementById("f-status").value;
    const cycle = document.getElementById("f-cycle").value;
    const onlySelected = document.getElementById("f-selected").checked;
    const text = document.getElementById("f-text").value.toLowerCase();
    let shown = 0;
    document.querySelectorAll("#candidates tbody tr").forEach(function (tr) {
      const c = byId.get(Number(tr.dataset.id));
      const hay = ((c.code || "") + "\n" + (c.reason || "") + "\n" + (c.response || ""));
      const ok = (!status || c.status === status) && (!cycle || String(c.cycle) === cycle) &&
        (!onlySelected || c.selected) && (!text || hay.toLowerCase().includes(text));
      tr.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("f-count").textContent = shown + " of " + candidates.length + " shown";
  }

  function fillSelect(id, values) {
    const select = document.getElementById(id);
    values.forEach(function (v) {
      const option = document.createElement("option");
      option.value = String(v);
      option.textContent = String(v);
      select.appendChild(option);
    });
    select.addEventListener("change", applyFilters);
  }

  function link(id) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.textContent = "#" + id;
    b.addEventListener("click", function () { show(id); });
    return b;
  }

  function lineage(target, label, ids) {
    const p = document.createElement("p");
    p.textContent = label + ": ";
    if (!ids.length) p.appendChild(document.createTextNode("none"));
    ids.forEach(function (id) { p.appendChild(byId.has(id) ? link(id) : document.createTextNode("#" + id + " ")); });
    target.appendChild(p);
  }

  function ancestors(c) {
    const seen = new Set();
    let frontier = c.parent_ids.slice();
    while (frontier.length && seen.size < 200) {
      const next = [];
      frontier.forEach(function (id) {
        if (seen.has(id)) return;
        seen.add(id);
        const parent = byId.get(id);
        if (parent) next.push.apply(next, parent.parent_ids);
      });
      frontier = next;
    }
    return Array.from(seen).sort(function (a, b) { return a - b; });
  }

  function show(id, fromRow) {
    const c = byId.get(id);
    const panel = document.getElementById("candidate-detail");
    if (!c || !panel) return;
    document.getElementById("d-title").textContent =
      "Candidate #" + c.id + " (cycle " + c.cycle + ", " + c.status + ")";
    const facts = document.getElementById("d-facts");
    facts.replaceChildren();
    [["accuracy", fmt(c.accuracy, 3)], ["novelty", fmt(c.novelty, 3)],
      ["parameters", fmt(c.params)], ["seconds", fmt(c.seconds, 1)],
      ["near duplicate", fmt(c.near_duplicate)], ["selected", fmt(c.selected)],
      ["trial", fmt(c.trial)]].forEach(function (pair) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = pair[0];
      dd.textContent = pair[1];
      facts.append(dt, dd);
    });
    document.getElementById("d-reason").textContent = c.reason || "–";
    document.getElementById("d-code").textContent =
      c.code !== null ? c.code : "(no code found in the reply)";
    const reply = document.getElementById("d-response-box");
    reply.hidden = c.response === null;
    document.getElementById("d-response").textContent = c.response || "";
    const tree = document.getElementById("d-lineage");
    tree.replaceChildren();
    lineage(tree, "parents", c.parent_ids);
    lineage(tree, "all ancestors", ancestors(c));
    lineage(tree, "children", children.get(c.id) || []);
    panel.hidden = false;
    document.querySelectorAll("#candidates tbody tr.current").forEach(function (tr) {
      tr.classList.remove("current");
    });
    const row = document.querySelector('#candidates tbody tr[data-id="' + c.id + '"]');
    if (row) row.classList.add("current");
    if (!fromRow) { // opened from a plot, a link or a lineage button: bring both into view
      if (row && !row.hidden) row.scrollIntoView({ block: "nearest" });
      panel.scrollIntoView({ block: "nearest" });
    }
    if (window.location.hash !== "#c" + c.id) history.replaceState(null, "", "#c" + c.id);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const table = document.getElementById("candidates");
    if (table) {
      buildTable(table);
      const cycles = Array.from(new Set(candidates.map(function (c) { return c.cycle; })));
      const statuses = Array.from(new Set(candidates.map(function (c) { return c.status; })));
      fillSelect("f-status", statuses.sort());
      fillSelect("f-cycle", cycles.sort(function (a, b) { return a - b; }));
      document.getElementById("f-selected").addEventListener("change", applyFilters);
      document.getElementById("f-text").addEventListener("input", applyFilters);
      applyFilters();
      const fromHash = function () {
        const wanted = /^#c(\d+)$/.exec(window.location.hash);
        if (wanted) show(Number(wanted[1]));
      };
      fromHash(); // a link to report.html#c12 opens candidate 12
      window.addEventListener("hashchange", fromHash);
    }
    document.querySelectorAll("table.sortable").forEach(makeSortable);
    document.querySelectorAll("[data-opens-candidates]").forEach(function (plot) {
      if (typeof plot.on !== "function") return;
      plot.on("plotly_click", function (event) {
        const point = event.points && event.points[0];
        if (point && point.customdata) show(Number(point.customdata[0]));
      });
    });
  });
})();
