// The fade report's page. Every element is built from the data with textContent and
// attributes; no data ever goes through innerHTML. Only the cards on screen exist.
(function () {
  "use strict";

  var data = JSON.parse(document.getElementById("fade-data").textContent);
  var rows = data.rows;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var CARD_W = 200, CARD_H = 250, GAP = 10, OVERSCAN_LINES = 2, HISTOGRAM_BINS = 40, WORST_COUNT = 3;
  var TOP_GROUP = "\u0000top";  // the option value of the top folder, whose group is '' ('' selects all)
  var CURVE_COLOURS = ["#2a7ab8", "#d9822b", "#1b7f3b", "#8e44ad", "#c0271f", "#555555"];

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attributes || {}).forEach(function (key) { node.setAttribute(key, String(attributes[key])); });
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // A relative file path as a URL: every segment percent-encoded, so '#', '?', '%' or ':' in a
  // name stay part of the name and no scheme can appear.
  // A byte of a file name that is not UTF-8 arrives as a lone surrogate U+DC80..U+DCFF (Python's
  // surrogateescape): it goes back into the URL as that byte.
  function encodeSegment(segment) {
    return segment.replace(/[\ud800-\udbff][\udc00-\udfff]|[^]/g, function (c) {
      var code = c.charCodeAt(0);
      if (c.length === 1 && code >= 0xdc80 && code <= 0xdcff) return "%" + (code - 0xdc00).toString(16).toUpperCase();
      try { return encodeURIComponent(c); } catch (error) { return "%EF%BF%BD"; }
    });
  }

  function fileUrl(path) { return path.split("/").map(encodeSegment).join("/"); }

  function fmt(value, digits) {
    return value === undefined || value === null ? "n/a" : Number(value).toFixed(digits === undefined ? 4 : digits);
  }

  function baseName(path) { var parts = path.split("/"); return parts[parts.length - 1]; }

  // ---- state -------------------------------------------------------------------------------
  // mode: "none" (the run made no OK/NG decisions and no threshold is picked: no verdicts), "run" (the run's
  // own verdicts, as it decided them), "pick" (a what-if threshold typed, slid or given to fade report) or
  // "fitted" (the what-if threshold of best F1 on the labelled images).
  var state = {
    mode: "none", threshold: null,
    verdict: "", errors: "", label: "", group: null, search: "", sort: "score-desc", heatmaps: false
  };
  var view = [];          // row indices shown, in the current order
  var population = [];    // rows passing the filters that do not depend on the threshold
  var cards = new Map();  // row index -> card element (gallery, on screen only)
  var staticCards = [];   // cards outside the gallery (worst images)
  var orders = {};

  rows.forEach(function (row, index) { row.index = index; });
  var scored = rows.filter(function (row) { return row.score !== undefined && row.error === undefined; });
  var scoreMin = Math.min.apply(null, scored.map(function (r) { return r.score; }).concat([Infinity]));
  var scoreMax = Math.max.apply(null, scored.map(function (r) { return r.score; }).concat([-Infinity]));
  if (!isFinite(scoreMin)) { scoreMin = 0; scoreMax = 1; }
  if (scoreMax <= scoreMin) { scoreMax = scoreMin + 1e-6; }

  function hasScore(row) { return row.score !== undefined && row.error === undefined; }

  function verdictOf(row) {
    if (!hasScore(row) || state.mode === "none") return null;
    if (state.mode === "run") return row.run_verdict || null;
    return row.score >= state.threshold ? "NG" : "OK";
  }

  var hasRunVerdicts = rows.some(function (row) { return row.run_verdict !== undefined; });

  function outcomeOf(row) {
    var verdict = verdictOf(row);
    if (!row.label || !verdict) return null;
    if (row.label === "defective") return verdict === "NG" ? "TP" : "FN";
    return verdict === "NG" ? "FP" : "TN";
  }

  function compareScore(direction) {
    return function (a, b) {
      var ra = rows[a], rb = rows[b], sa = hasScore(ra), sb = hasScore(rb);
      if (sa !== sb) return sa ? -1 : 1;  // errors last
      if (sa && ra.score !== rb.score) return direction * (rb.score - ra.score);
      return ra.path < rb.path ? -1 : ra.path > rb.path ? 1 : a - b;
    };
  }

  function order(name) {
    if (!orders[name]) {
      var indices = rows.map(function (row) { return row.index; });
      if (name === "path") {
        indices.sort(function (a, b) {
          var pa = rows[a].path, pb = rows[b].path;
          return pa < pb ? -1 : pa > pb ? 1 : a - b;
        });
      } else {
        indices.sort(compareScore(name === "score-desc" ? 1 : -1));
      }
      orders[name] = indices;
    }
    return orders[name];
  }

  function passesStaticFilters(row) {
    var isError = !hasScore(row);
    if (state.errors === "hide" && isError) return false;
    if (state.errors === "only" && !isError) return false;
    if (state.group !== null && row.group !== state.group) return false;
    if ((state.label === "good" || state.label === "defective") && row.label !== state.label) return false;
    if (state.search && row.path.toLowerCase().indexOf(state.search) < 0) return false;
    return true;
  }

  function passesThresholdFilters(row) {
    if (state.verdict && verdictOf(row) !== state.verdict) return false;
    if (/^(TP|FP|TN|FN)$/.test(state.label) && outcomeOf(row) !== state.label) return false;
    return true;
  }

  function recompute() {
    population = order(state.sort).filter(function (index) { return passesStaticFilters(rows[index]); });
    view = population.filter(function (index) { return passesThresholdFilters(rows[index]); });
  }

  // ---- cards -------------------------------------------------------------------------------
  function picture(src, className) {
    var image = el("img", className);
    image.alt = "";
    image.loading = "lazy";
    image.decoding = "async";
    image.src = fileUrl(src);
    return image;
  }

  function makeCard(row, list, position) {
    var card = el("div", "card");
    card.tabIndex = 0;
    card.setAttribute("role", "listitem");
    card.dataset.index = String(row.index);
    card.setAttribute("data-path", row.path);
    card.title = row.path;
    var thumb = el("div", "thumb");
    if (row.thumb) thumb.appendChild(picture(row.thumb, "image"));
    else if (row.heat_thumb) thumb.appendChild(picture(row.heat_thumb, "image heat"));
    else thumb.appendChild(el("span", "missing", hasScore(row) ? "no picture" : "error"));
    if (row.map_thumb) thumb.appendChild(picture(row.map_thumb, "map"));
    card.appendChild(thumb);
    card.appendChild(el("div", "name", baseName(row.path)));
    card.appendChild(el("div", "folder", cardFolder(row)));
    var scores = el("div", "scores");
    if (hasScore(row)) {
      scores.appendChild(el("span", "score", fmt(row.score)));
      var parts = [];
      if (row.language_score !== undefined) parts.push("language " + fmt(row.language_score, 3));
      if (row.vision_score !== undefined) parts.push("vision " + fmt(row.vision_score, 3));
      var sub = scores.appendChild(el("span", "sub", parts.join(" \u00b7 ")));
      sub.title = "language score: the image against the prompts; vision score: against the reference images";
    }
    card.appendChild(scores);
    var badges = el("div", "badges");
    card.appendChild(badges);
    if (row.error !== undefined) card.appendChild(el("div", "error-text", row.error));
    card._badges = badges;
    card._row = row;
    card._list = list;
    card._position = position;
    updateBadges(card);
    return card;
  }

  function cardFolder(row) {
    if (row.defect === undefined) return row.group || "\u00a0";
    return row.group + " \u00b7 " + row.defect + (row.seed === undefined ? "" : " \u00b7 seed " + row.seed);
  }

  function updateBadges(card) {
    var row = card._row, badges = card._badges;
    while (badges.firstChild) badges.removeChild(badges.firstChild);
    var verdict = verdictOf(row);
    if (!hasScore(row)) badges.appendChild(el("span", "badge error verdict", "error"));
    else if (verdict) badges.appendChild(el("span", "badge verdict " + verdict, verdict));
    if (row.label) badges.appendChild(el("span", "badge label " + row.label, row.label));
    var outcome = outcomeOf(row);
    if (outcome) badges.appendChild(el("span", "badge outcome", outcome));
    card.dataset.verdict = verdict || (hasScore(row) ? "" : "error");
  }

  function cardClicked(event) {
    var card = event.target.closest(".card");
    if (card) openDetail(card._list(), card._position());
  }

  function cardKey(event) {
    if (event.key !== "Enter" && event.key !== " ") return;
    var card = event.target.closest(".card");
    if (!card) return;
    event.preventDefault();
    openDetail(card._list(), card._position());
  }

  // ---- the virtual gallery -----------------------------------------------------------------
  var gallery = $("gallery");
  var columns = 1;
  var renderQueued = false;

  function layout() {
    columns = Math.max(1, Math.floor((gallery.clientWidth + GAP) / (CARD_W + GAP)));
    var lines = Math.ceil(view.length / columns);
    gallery.style.height = Math.max(0, lines * (CARD_H + GAP) - GAP) + "px";
  }

  function renderVisible() {
    renderQueued = false;
    var top = gallery.getBoundingClientRect().top;
    var lineHeight = CARD_H + GAP;
    var firstLine = Math.max(0, Math.floor(-top / lineHeight) - OVERSCAN_LINES);
    var lastLine = Math.max(0, Math.ceil((window.innerHeight - top) / lineHeight) + OVERSCAN_LINES);
    var start = Math.min(view.length, firstLine * columns);
    var end = Math.min(view.length, (lastLine + 1) * columns);
    var kept = new Map();
    for (var position = start; position < end; position++) {
      var index = view[position];
      var card = cards.get(index);
      if (!card) {
        card = makeCard(rows[index], function () { return view; }, null);
        gallery.appendChild(card);
      }
      (function (p) { card._position = function () { return p; }; })(position);
      card.style.left = ((position % columns) * (CARD_W + GAP)) + "px";
      card.style.top = (Math.floor(position / columns) * lineHeight) + "px";
      kept.set(index, card);
    }
    cards.forEach(function (card, index) { if (!kept.has(index)) card.remove(); });
    cards = kept;
  }

  function queueRender() {
    if (!renderQueued) { renderQueued = true; window.requestAnimationFrame(renderVisible); }
  }

  function refreshGallery() {
    recompute();
    layout();
    renderVisible();
    $("shown-count").textContent = "Showing " + view.length + " of " + rows.length + " images";
  }

  function scrollToPosition(position) {
    var top = gallery.getBoundingClientRect().top + window.scrollY;
    var y = top + Math.floor(position / columns) * (CARD_H + GAP);
    if (y < window.scrollY || y + CARD_H > window.scrollY + window.innerHeight) {
      window.scrollTo(0, Math.max(0, y - 40));
    }
    renderVisible();
  }

  // ---- threshold explorer ------------------------------------------------------------------
  var slider = $("threshold-slider"), numberBox = $("threshold-input");

  // Sets what the verdicts come from (see state.mode) and the threshold; ``source`` is the control that
  // changed it ("slider", "input"), whose value is left as the person set it.
  function setThreshold(mode, value, source) {
    var known = value !== null && value !== undefined;
    state.mode = mode;
    state.threshold = known ? value : null;
    if (source !== "input") numberBox.value = known ? String(value) : "";
    if (source !== "slider" && known) slider.value = String(Math.min(scoreMax, Math.max(scoreMin, value)));
    $("threshold-arg").value = known ? "--threshold " + String(value) : "";
    $("copy-threshold").disabled = !known;
    $("copy-status").textContent = "";
    describeThreshold();
    updateCounts();
    drawThresholdLine();
    var needsRefilter = state.verdict || /^(TP|FP|TN|FN)$/.test(state.label);
    if (needsRefilter) refreshGallery();
    cards.forEach(updateBadges);
    staticCards.forEach(updateBadges);
    if (!$("detail").hidden) showDetail();
  }

  function describeThreshold() {
    var note = $("threshold-note"), text;
    var truth = data.kind === "eval" ? "the dataset's labels" : "the ground truth from the folder names";
    if (state.mode === "none") {
      text = "No threshold: this run made no OK/NG decisions, so no image has a verdict. " +
        "Move the slider or type a threshold to see what-if verdicts.";
    } else if (state.mode === "run") {
      text = "The run's verdicts, as it decided them" +
        (state.threshold === null ? "." : " (threshold " + String(state.threshold) + ": NG at or above).");
    } else if (state.mode === "fitted") {
      text = "What-if: fitted on " + data.fitted.labelled + " labelled images (best F1 on " + truth +
        "); not a production threshold.";
    } else {
      text = "What-if: " + (data.threshold_source === "given" && state.threshold === data.threshold ?
        "the threshold given to fade report" : "your pick") + ", not " +
        (hasRunVerdicts ? "the run's verdicts." : "a decision of the run (it made none).");
    }
    note.textContent = text;
    note.className = "threshold-note" + (state.mode === "pick" || state.mode === "fitted" ? " what-if" : "");
    note.dataset.mode = state.mode;
    $("use-run-verdicts").hidden = state.mode === (hasRunVerdicts ? "run" : "none");
    $("use-fitted").hidden = !data.fitted || state.mode === "fitted";
    $("threshold-counts").classList.toggle("no-verdicts", state.mode === "none");
  }

  function updateCounts() {
    var counts = { OK: 0, NG: 0, errors: 0, TP: 0, FP: 0, TN: 0, FN: 0 };
    population.forEach(function (index) {
      var row = rows[index];
      var verdict = verdictOf(row);
      if (!hasScore(row)) counts.errors++;
      else if (verdict) counts[verdict]++;
      var outcome = outcomeOf(row);
      if (outcome) counts[outcome]++;
    });
    var none = state.mode === "none";  // no verdicts: no counts of them either
    $("count-ok").textContent = none ? "\u2013" : String(counts.OK);
    $("count-ng").textContent = none ? "\u2013" : String(counts.NG);
    $("count-errors").textContent = String(counts.errors);
    ["TP", "FP", "TN", "FN"].forEach(function (name) {
      $("count-" + name.toLowerCase()).textContent = none ? "\u2013" : String(counts[name]);
    });
    var flagged = counts.TP + counts.FP, defective = counts.TP + counts.FN;
    $("precision").textContent = flagged ? (counts.TP / flagged).toFixed(3) : "n/a";
    $("recall").textContent = defective ? (counts.TP / defective).toFixed(3) : "n/a";
  }

  var histogram = $("histogram");
  var histogramLine = null;
  var HIST = { width: 800, height: 130, left: 34, right: 10, top: 6, bottom: 20 };

  function histogramX(value) {
    var span = HIST.width - HIST.left - HIST.right;
    return HIST.left + span * (value - scoreMin) / (scoreMax - scoreMin);
  }

  function drawHistogram() {
    while (histogram.firstChild) histogram.removeChild(histogram.firstChild);
    HIST.width = Math.max(300, histogram.clientWidth || 800);
    histogram.setAttribute("viewBox", "0 0 " + HIST.width + " " + HIST.height);
    var kinds = data.has_labels ? ["good", "defective"] : ["unknown"];
    var bins = kinds.map(function () { return new Array(HISTOGRAM_BINS).fill(0); });
    population.forEach(function (index) {
      var row = rows[index];
      if (!hasScore(row)) return;
      var bin = Math.min(HISTOGRAM_BINS - 1, Math.floor(HISTOGRAM_BINS * (row.score - scoreMin) / (scoreMax - scoreMin)));
      var kind = data.has_labels ? (row.label === "defective" ? 1 : 0) : 0;
      if (data.has_labels && !row.label) return;
      bins[kind][bin]++;
    });
    var tallest = 1;
    for (var b = 0; b < HISTOGRAM_BINS; b++) {
      tallest = Math.max(tallest, bins.reduce(function (sum, counts) { return sum + counts[b]; }, 0));
    }
    var plotHeight = HIST.height - HIST.top - HIST.bottom;
    var binWidth = (HIST.width - HIST.left - HIST.right) / HISTOGRAM_BINS;
    for (var bin = 0; bin < HISTOGRAM_BINS; bin++) {
      var base = HIST.height - HIST.bottom;
      kinds.forEach(function (kind, k) {
        var count = bins[k][bin];
        if (!count) return;
        var height = plotHeight * count / tallest;
        base -= height;
        histogram.appendChild(svg("rect", { "class": "bar-" + kind, x: HIST.left + bin * binWidth + 0.5, y: base,
          width: Math.max(0.5, binWidth - 1), height: height }, undefined)).appendChild(
          svg("title", {}, kind + ": " + count));
      });
    }
    histogram.appendChild(svg("line", { "class": "axis", x1: HIST.left, x2: HIST.width - HIST.right,
      y1: HIST.height - HIST.bottom, y2: HIST.height - HIST.bottom }));
    [scoreMin, (scoreMin + scoreMax) / 2, scoreMax].forEach(function (value, i) {
      histogram.appendChild(svg("text", { "class": "tick", x: histogramX(value), y: HIST.height - 5,
        "text-anchor": ["start", "middle", "end"][i] }, fmt(value, 3)));
    });
    histogram.appendChild(svg("text", { "class": "tick", x: 2, y: HIST.top + 10 }, String(tallest)));
    histogramLine = svg("line", { "class": "threshold-line", id: "histogram-threshold",
      y1: HIST.top, y2: HIST.height - HIST.bottom });
    histogram.appendChild(histogramLine);
    drawThresholdLine();
  }

  function drawThresholdLine() {
    if (!histogramLine) return;
    histogramLine.style.display = state.threshold === null ? "none" : "";
    if (state.threshold === null) return;
    var x = histogramX(Math.min(scoreMax, Math.max(scoreMin, state.threshold)));
    histogramLine.setAttribute("x1", String(x));
    histogramLine.setAttribute("x2", String(x));
  }

  function copyThreshold() {
    var box = $("threshold-arg"), status = $("copy-status");
    function fallback() {
      box.select();
      var done = false;
      try { done = document.execCommand("copy"); } catch (error) { done = false; }
      status.textContent = done ? "Copied" : "Select and copy the text";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(box.value).then(function () { status.textContent = "Copied"; }, fallback);
    } else {
      fallback();
    }
  }

  // ---- detail view -------------------------------------------------------------------------
  var detail = { list: [], position: 0, returnFocus: null };

  function openDetail(list, position) {
    if (!list.length) return;
    detail.list = list;
    detail.position = Math.max(0, Math.min(list.length - 1, position));
    detail.returnFocus = document.activeElement;
    $("detail").hidden = false;
    showDetail();
    $("detail-close").focus();
  }

  function closeDetail() {
    $("detail").hidden = true;
    if (detail.list === view) scrollToPosition(detail.position);
    var card = cards.get(detail.list[detail.position]);
    if (detail.list === view && card) card.focus();
    else if (detail.returnFocus && detail.returnFocus.focus) detail.returnFocus.focus();
  }

  function moveDetail(step) {
    var next = detail.position + step;
    if (next < 0 || next >= detail.list.length) return;
    detail.position = next;
    showDetail();
  }

  function setImage(node, src, fallbackSrc) {
    node.onerror = null;
    if (!src) { node.removeAttribute("src"); node.hidden = true; return; }
    node.hidden = false;
    if (fallbackSrc && fallbackSrc !== src) {
      node.onerror = function () { node.onerror = null; node.src = fileUrl(fallbackSrc); };
    }
    node.src = fileUrl(src);
  }

  function addInfo(list, term, value) {
    if (value === undefined || value === null || value === "") return;
    list.appendChild(el("dt", null, term));
    list.appendChild(el("dd", null, value));
  }

  function showDetail() {
    var row = rows[detail.list[detail.position]];
    $("detail").dataset.index = String(row.index);
    $("detail-position").textContent = (detail.position + 1) + " / " + detail.list.length;
    var base = row.source || row.thumb || row.heat_thumb;
    setImage($("detail-image"), base, row.thumb || row.heat_thumb);
    setImage($("detail-map"), row.map_thumb, null);
    $("detail-map").style.opacity = $("detail-opacity").value;
    setImage($("detail-mask"), $("detail-show-mask").checked ? row.mask : null, null);
    $("detail-mask-wrap").hidden = !row.mask;
    drawRegions(row);
    var info = $("detail-info");
    while (info.firstChild) info.removeChild(info.firstChild);
    addInfo(info, "path", row.path);
    addInfo(info, "folder", row.group);
    if (hasScore(row)) {
      addInfo(info, "score", String(row.score));
      addInfo(info, "language score", row.language_score !== undefined ? String(row.language_score) : null);
      addInfo(info, "vision score", row.vision_score !== undefined ? String(row.vision_score) : null);
      if (state.mode === "pick" || state.mode === "fitted") {
        addInfo(info, "what-if verdict at " + String(state.threshold), verdictOf(row));
      }
    }
    addInfo(info, "verdict in the run", row.run_verdict || (hasScore(row) ? "none (the run had no threshold)" : null));
    addInfo(info, "truth", row.label ? row.label + (row.defect && row.defect !== "good" ? " (" + row.defect + ")" : "") : null);
    addInfo(info, "outcome", outcomeOf(row));
    addInfo(info, "seed", row.seed !== undefined ? String(row.seed) : null);
    addInfo(info, "error", row.error);
    addInfo(info, "regions", row.regions ? row.regions.length + " (boxes in red)" : null);
    addInfo(info, "image file", row.source);
    addInfo(info, "heatmap file", row.heatmap);
    addInfo(info, "map file", row.map_path);
    addInfo(info, "mask file", row.mask);
  }

  function drawRegions(row) {
    var layer = $("detail-regions");
    while (layer.firstChild) layer.removeChild(layer.firstChild);
    var show = row.regions && row.size && $("detail-show-regions").checked;
    $("detail-regions-wrap").hidden = !(row.regions && row.size);
    layer.style.display = show ? "" : "none";
    if (!show) return;
    layer.setAttribute("viewBox", "0 0 " + row.size[0] + " " + row.size[1]);
    row.regions.forEach(function (region) {
      var box = region.bbox;
      layer.appendChild(svg("rect", { x: box[0], y: box[1], width: box[2] - box[0], height: box[3] - box[1] }))
        .appendChild(svg("title", {}, "area " + region.area + ", peak " + fmt(region.peak, 3)));
    });
  }

  function detailKey(event) {
    if ($("detail").hidden) return;
    if (event.key === "Escape") { event.preventDefault(); closeDetail(); }
    else if (event.key === "ArrowRight" || event.key === "ArrowDown") { event.preventDefault(); moveDetail(1); }
    else if (event.key === "ArrowLeft" || event.key === "ArrowUp") { event.preventDefault(); moveDetail(-1); }
  }

  // ---- eval: metrics table, curves, worst images --------------------------------------------
  var HEADERS = data.eval ? data.eval.headers || {} : {};

  function percentCell(mean, std) {
    var cell = el("td");
    if (mean === undefined || mean === null) { cell.textContent = "n/a"; return cell; }
    cell.textContent = (100 * mean).toFixed(1) + (std === undefined || std === null ? "" : " \u00b1 " + (100 * std).toFixed(1));
    cell.dataset.value = String(mean);
    if (std !== undefined && std !== null) cell.dataset.std = String(std);
    cell.title = String(mean) + (std !== undefined && std !== null ? " \u00b1 " + String(std) : "");
    return cell;
  }

  function drawMetricsTable() {
    var table = $("metrics-table"), metrics = data.eval.metrics;
    var head = el("tr");
    head.appendChild(el("th", null, "class"));
    metrics.forEach(function (name) { var th = el("th", null, HEADERS[name] || name); th.dataset.metric = name; head.appendChild(th); });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    var entries = Object.keys(data.eval.classes).map(function (name) { return [name, data.eval.classes[name], "class"]; });
    entries.push(["mean", data.eval.mean, "mean"]);
    entries.forEach(function (entry) {
      var tr = el("tr", entry[2]);
      tr.dataset.class = entry[0];
      tr.appendChild(el("td", null, entry[0]));
      var aggregate = entry[1] || {}, mean = aggregate.mean || {}, std = aggregate.std || {};
      metrics.forEach(function (name) {
        var cell = percentCell(mean[name], std ? std[name] : null);
        cell.dataset.metric = name;
        tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
  }

  var CURVE_KINDS = [
    { kind: "roc", x: "fpr", y: "tpr", title: "image ROC", xLabel: "false positive rate", yLabel: "true positive rate", xMax: 1, diagonal: true },
    { kind: "pr", x: "recall", y: "precision", title: "image precision-recall", xLabel: "recall", yLabel: "precision", xMax: 1 },
    { kind: "pro", x: "fpr", y: "pro", title: "per-region overlap", xLabel: "false positive rate (pixels)", yLabel: "PRO", xMax: 0.3 }
  ];

  function curveChart(spec, entries) {
    var size = 240, left = 34, top = 8, plot = 190;
    var chart = svg("svg", { "class": "curve", viewBox: "0 0 " + size + " " + size, role: "img", "data-kind": spec.kind });
    chart.appendChild(svg("title", {}, spec.title));
    chart.appendChild(svg("rect", { "class": "axis", x: left, y: top, width: plot, height: plot }));
    [0, 0.5, 1].forEach(function (f) {
      chart.appendChild(svg("text", { "class": "tick", x: left + f * plot, y: top + plot + 12, "text-anchor": "middle" },
        String(Math.round(f * spec.xMax * 100) / 100)));
      chart.appendChild(svg("text", { "class": "tick", x: left - 4, y: top + plot - f * plot + 3, "text-anchor": "end" }, String(f)));
    });
    chart.appendChild(svg("text", { "class": "tick", x: left + plot / 2, y: size - 4, "text-anchor": "middle" }, spec.xLabel));
    // Points are written in data coordinates, the group maps them onto the plot.
    var group = svg("g", { transform: "translate(" + left + " " + (top + plot) + ") scale(" + (plot / spec.xMax) + " " + (-plot) + ")" });
    if (spec.diagonal) group.appendChild(svg("polyline", { "class": "diagonal", points: "0,0 1,1" }));
    entries.forEach(function (entry, i) {
      var curve = entry[spec.kind];
      if (!curve) return;
      var xs = curve[spec.x], ys = curve[spec.y];
      var points = xs.map(function (x, k) { return x + "," + ys[k]; }).join(" ");
      var line = svg("polyline", { "class": "curve-line", points: points, stroke: CURVE_COLOURS[i % CURVE_COLOURS.length],
        "data-kind": spec.kind, "data-class": entry["class"], "data-seed": entry.seed === null ? "" : entry.seed });
      line.appendChild(svg("title", {}, entry.seed === null ? entry["class"] : entry["class"] + ", seed " + entry.seed));
      group.appendChild(line);
    });
    chart.appendChild(group);
    if (!entries.some(function (entry) { return entry[spec.kind]; })) {
      chart.appendChild(svg("text", { "class": "tick", x: left + plot / 2, y: top + plot / 2, "text-anchor": "middle" }, "undefined"));
    }
    return chart;
  }

  function drawCurves() {
    var container = $("curves"), byClass = new Map();
    data.eval.curves.forEach(function (entry) {
      if (!byClass.has(entry["class"])) byClass.set(entry["class"], []);
      byClass.get(entry["class"]).push(entry);
    });
    if (!byClass.size) container.appendChild(el("p", "note", "No curves: this report has no curves.json."));
    byClass.forEach(function (entries, name) {
      var block = el("div", "curve-class");
      block.dataset.class = name;
      var seeds = entries.filter(function (e) { return e.seed !== null; }).map(function (e) { return "seed " + e.seed; });
      block.appendChild(el("h3", null, name));
      if (seeds.length > 1) {
        var legend = el("div", "legend");
        seeds.forEach(function (seed, i) {
          var key = el("b", null, "\u2014 " + seed + "  ");
          key.style.color = CURVE_COLOURS[i % CURVE_COLOURS.length];
          legend.appendChild(key);
        });
        block.appendChild(legend);
      }
      var line = el("div", "curve-row");
      CURVE_KINDS.forEach(function (spec) {
        var figure = el("figure");
        figure.appendChild(curveChart(spec, entries));
        figure.appendChild(el("figcaption", null, spec.title));
        line.appendChild(figure);
      });
      block.appendChild(line);
      container.appendChild(block);
    });
  }

  function drawWorst() {
    var container = $("worst"), runs = new Map();
    rows.forEach(function (row) {
      if (!hasScore(row) || !row.label) return;
      var key = row.group + (row.seed === undefined ? "" : ", seed " + row.seed);
      if (!runs.has(key)) runs.set(key, []);
      runs.get(key).push(row.index);
    });
    runs.forEach(function (indices, key) {
      var block = el("div", "worst-class");
      block.dataset.run = key;
      var good = indices.filter(function (i) { return rows[i].label === "good"; })
        .sort(function (a, b) { return rows[b].score - rows[a].score; }).slice(0, WORST_COUNT);
      var defective = indices.filter(function (i) { return rows[i].label === "defective"; })
        .sort(function (a, b) { return rows[a].score - rows[b].score; }).slice(0, WORST_COUNT);
      block.appendChild(el("h3", null, key));
      var parts = el("div", "worst-parts");
      [["highest-scored good images", good, "fp"], ["lowest-scored defective images", defective, "fn"]].forEach(function (part) {
        var column = el("div", "worst-part");
        column.appendChild(el("div", "note", part[0]));
        var strip = el("div", "cards-static");
        strip.dataset.worst = part[2];
        part[1].forEach(function (index, position) {
          var card = makeCard(rows[index], function () { return part[1]; }, null);
          card._position = function () { return position; };
          strip.appendChild(card);
          staticCards.push(card);
        });
        column.appendChild(strip);
        parts.appendChild(column);
      });
      block.appendChild(parts);
      container.appendChild(block);
    });
  }

  // ---- the run's header ----------------------------------------------------------------------
  function drawRunHeader() {
    var header = data.header || { items: [], banner: null, notes: [] }, facts = $("run-facts");
    header.items.forEach(function (item) {
      var term = el("dt", null, item[0]), value = el("dd", null, item[1] === null ? "not recorded" : item[1]);
      value.dataset.term = item[0];
      if (item[1] === null) value.className = "not-recorded";
      facts.appendChild(term);
      facts.appendChild(value);
    });
    $("weights-banner").hidden = !header.banner;
    $("weights-banner").textContent = header.banner || "";
    header.notes.forEach(function (note) { $("run-notes").appendChild(el("p", "note", note)); });
  }

  // ---- wiring ------------------------------------------------------------------------------
  function setup() {
    $("title").textContent = data.title;
    var subtitle = data.run_dir + " \u00b7 " + rows.length + " images" +
      (data.complete ? "" : " \u00b7 interrupted run: only the images it finished");
    $("subtitle").textContent = subtitle;
    var groups = Array.from(new Set(rows.map(function (row) { return row.group; }))).sort();
    groups.forEach(function (group) {
      var option = el("option", null, group === "" ? "(top folder)" : group);
      option.value = group === "" ? TOP_GROUP : group;
      $("filter-group").appendChild(option);
    });
    $("filter-label-wrap").hidden = !data.has_labels;
    $("confusion").hidden = !data.has_labels;
    $("legend").hidden = !data.has_labels;
    slider.min = String(scoreMin);
    slider.max = String(scoreMax);
    slider.value = String((scoreMin + scoreMax) / 2);
    drawRunHeader();
    $("detail-scale-bar").style.background = "linear-gradient(to right, " + data.colour_scale.join(", ") + ")";
    if (data.fitted) {
      $("use-fitted").textContent = "What-if: the threshold of best F1 on the " + data.fitted.labelled + " labelled images";
    }

    function onFilter(id, key, transform) {
      $(id).addEventListener("input", function () {
        var value = $(id).value;
        state[key] = transform ? transform(value) : value;
        refreshGallery();
        updateCounts();
        drawHistogram();
      });
    }
    onFilter("filter-verdict", "verdict");
    onFilter("filter-errors", "errors");
    onFilter("filter-label", "label");
    onFilter("filter-group", "group", function (value) { return value === "" ? null : value === TOP_GROUP ? "" : value; });
    onFilter("filter-search", "search", function (value) { return value.toLowerCase(); });
    onFilter("sort", "sort");
    $("show-heatmap").addEventListener("change", function () {
      gallery.classList.toggle("show-maps", $("show-heatmap").checked);
      $("worst").classList.toggle("show-maps", $("show-heatmap").checked);
    });
    // A slid value is rounded to 4 significant digits: the slider's pixels are no finer, and the Copy box
    // should not offer 16 digits of noise.
    slider.addEventListener("input", function () { setThreshold("pick", Number(Number(slider.value).toPrecision(4)), "slider"); });
    numberBox.addEventListener("input", function () {
      var value = Number(numberBox.value);
      if (numberBox.value.trim() !== "" && isFinite(value)) setThreshold("pick", value, "input");
    });
    $("use-run-verdicts").textContent = hasRunVerdicts ? "Back to the run's verdicts" : "Clear: no threshold, as in the run";
    $("use-run-verdicts").addEventListener("click", function () {
      setThreshold(hasRunVerdicts ? "run" : "none", hasRunVerdicts ? data.run_threshold : null, null);
    });
    $("use-fitted").addEventListener("click", function () { setThreshold("fitted", data.fitted.value, null); });
    $("copy-threshold").addEventListener("click", copyThreshold);
    gallery.addEventListener("click", cardClicked);
    gallery.addEventListener("keydown", cardKey);
    $("worst").addEventListener("click", cardClicked);
    $("worst").addEventListener("keydown", cardKey);
    $("detail-prev").addEventListener("click", function () { moveDetail(-1); });
    $("detail-next").addEventListener("click", function () { moveDetail(1); });
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-opacity").addEventListener("input", function () { $("detail-map").style.opacity = $("detail-opacity").value; });
    $("detail-show-mask").addEventListener("change", showDetail);
    $("detail-show-regions").addEventListener("change", showDetail);
    document.addEventListener("keydown", detailKey);
    window.addEventListener("scroll", queueRender, { passive: true });
    window.addEventListener("resize", function () { layout(); queueRender(); drawHistogram(); });

    if (data.eval) {
      $("eval-section").hidden = false;
      drawMetricsTable();
      drawCurves();
      drawWorst();
    }
    refreshGallery();
    drawHistogram();
    var startMode = { given: "pick", run: "run" }[data.threshold_source] || "none";
    setThreshold(startMode, data.threshold, null);
    // Milliseconds from the start of navigation until the page answers input (read by the tests).
    document.body.dataset.readyMs = String(performance.now());
    document.body.dataset.ready = "1";
  }

  setup();
})();
