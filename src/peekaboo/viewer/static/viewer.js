/* peekaboo viewer: the little behaviour the static pages need.
   Item pages: click a step to show its heat map on the trace's large image; hovering a masked step's link
   marks the base step it was matched to. Index pages: Tabulator (vendored) sorts, filters and pages the rows
   of index-data.js; the preset buttons filter on flags computed when the site was built. */
(function () {
  "use strict";

  function setRow(overlay, k) {
    var rows = Number(overlay.getAttribute("data-rows")) || 1;
    overlay.style.backgroundPositionY = rows > 1 ? (100 * k / (rows - 1)) + "%" : "0%";
  }

  function showStep(trace, k) {
    trace.querySelectorAll("li.step").forEach(function (li) {
      li.classList.toggle("selected", Number(li.getAttribute("data-position")) === k);
    });
    trace.querySelectorAll(".figures.main .overlay").forEach(function (ov) { setRow(ov, k); });
    var label = trace.querySelector(".shown-step");
    var li = trace.querySelector('li.step[data-position="' + k + '"]');
    if (label && li) { label.textContent = li.getAttribute("data-label"); }
  }

  function itemPage() {
    document.querySelectorAll(".trace").forEach(function (trace) {
      var first = trace.querySelector("li.step");
      if (first) { showStep(trace, Number(first.getAttribute("data-position"))); }
      trace.querySelectorAll("li.step").forEach(function (li) {
        li.addEventListener("click", function (ev) {
          if (ev.target.closest("a")) { return; }
          showStep(trace, Number(li.getAttribute("data-position")));
        });
      });
    });
    document.querySelectorAll("a.match").forEach(function (a) {
      var target = document.getElementById(a.getAttribute("href").slice(1));
      if (!target) { return; }
      a.addEventListener("mouseenter", function () { target.classList.add("linked"); });
      a.addEventListener("mouseleave", function () { target.classList.remove("linked"); });
      a.addEventListener("click", function () {
        var trace = target.closest(".trace");
        if (trace) { showStep(trace, Number(target.getAttribute("data-position"))); }
      });
    });
    document.querySelectorAll("input[data-toggle]").forEach(function (box) {
      var cls = box.getAttribute("data-toggle");
      box.addEventListener("change", function () { document.body.classList.toggle(cls, !box.checked); });
    });
  }

  // "<0.5", ">= 1", "=2", "0.1..0.3" or a plain number (at least); anything else matches nothing
  function numericFilter(headerValue, rowValue) {
    var text = String(headerValue).trim();
    if (!text) { return true; }
    if (rowValue === null || rowValue === undefined) { return false; }
    var range = text.match(/^(-?[\d.]+(?:e-?\d+)?)\s*\.\.\s*(-?[\d.]+(?:e-?\d+)?)$/i);
    if (range) { return rowValue >= Number(range[1]) && rowValue <= Number(range[2]); }
    var m = text.match(/^(<=|>=|<|>|=)?\s*(-?[\d.]+(?:e-?\d+)?)$/i);
    if (!m) { return false; }
    var v = Number(m[2]);
    switch (m[1]) {
      case "<": return rowValue < v;
      case "<=": return rowValue <= v;
      case ">": return rowValue > v;
      case "=": return rowValue === v;
      default: return rowValue >= v;
    }
  }

  function fixed(cell) {
    var v = cell.getValue();
    return v === null || v === undefined ? "" : Number(v).toPrecision(3);
  }

  var TICK = {
    formatter: "tickCross", formatterParams: { allowEmpty: true }, hozAlign: "center", sorter: "boolean",
    headerFilter: "tickCross", headerFilterParams: { tristate: true },
    headerFilterEmptyCheck: function (v) { return v === null || v === undefined || v === ""; }
  };

  function tick(field, title) { return Object.assign({ field: field, title: title || field }, TICK); }

  function number(field, title) {
    return {
      field: field, title: title || field, sorter: "number", hozAlign: "right", formatter: fixed,
      headerFilter: "input", headerFilterFunc: numericFilter, headerFilterPlaceholder: "<0.5, 0.1..0.3"
    };
  }

  function indexPage(element, data, pageSize) {
    var meta = data.meta;
    var columns = [
      { field: "item", title: "item", formatter: "link", formatterParams: { urlField: "page", labelField: "item" },
        headerFilter: "input", frozen: true },
      { field: "task_type", title: "task", headerFilter: "list", headerFilterParams: { valuesLookup: true, clearable: true } },
      { field: "question", title: "question", headerFilter: "input", width: 280, tooltip: true },
      { field: "gold", title: "gold", headerFilter: "input" },
      { field: "answer", title: "answer", headerFilter: "input" },
      tick("correct"), tick("abstained"), tick("truncated")
    ];
    meta.numbers.forEach(function (c) { columns.push(number(c)); });
    columns.push(number("entropy_z", "z(entropy)"));
    columns.push({ field: "n_steps", title: "steps", sorter: "number", hozAlign: "right",
                   headerFilter: "input", headerFilterFunc: numericFilter });
    columns.push({ field: "modes", title: "CRM modes", headerFilter: "input", headerFilterPlaceholder: "collapse" });
    columns.push(tick("evidence_flip", "answer flips: evidence"));
    columns.push(tick("control_flip", "answer flips: control"));
    meta.flags.forEach(function (c) { columns.push(tick(c)); });
    columns.push({ field: "status", title: "status", headerFilter: "input" });

    var table = new Tabulator(element, {
      data: data.rows, columns: columns, layout: "fitDataStretch", pagination: true, paginationSize: pageSize,
      paginationCounter: "rows", index: "item", placeholder: "no items match"
    });
    var status = document.getElementById("index-status");
    table.on("dataFiltered", function (filters, rows) {
      if (status) { status.textContent = rows.length + " of " + data.rows.length + " items shown"; }
    });
    table.on("tableBuilt", function () {
      if (status) { status.textContent = data.rows.length + " of " + data.rows.length + " items shown"; }
    });
    document.querySelectorAll(".presets button").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll(".presets button").forEach(function (b) { b.classList.remove("active"); });
        button.classList.add("active");
        var key = button.getAttribute("data-key");
        if (!key) { table.clearFilter(); return; }
        table.setFilter(function (row) { return Boolean(row.flags && row.flags[key]); });
      });
    });
    window.peekabooTable = table;
    return table;
  }

  window.PeekabooViewer = { indexPage: indexPage, numericFilter: numericFilter };
  if (document.querySelector(".trace")) { itemPage(); }
})();
