// Browsing the answers of one or more runs: filters, search and paging, all in the page (no server).
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var Q = D.questions, RUNS = D.runs, IMAGES = D.images;
  var PAGE = D.page_size || 50;
  var STATUS = { c: "correct", w: "wrong", p: "parse failure", e: "error", n: "not asked" };
  var view = [], page = 0, haystack = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fill(sel, pairs) {
    pairs.forEach(function (p) { var o = el("option", null, p[1]); o.value = p[0]; sel.appendChild(o); });
  }
  function uniq(f) {
    var seen = {};
    Q.forEach(function (q) { seen[f(q)] = 1; });
    return Object.keys(seen).sort();
  }
  function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits === undefined ? 3 : digits) : String(v); }

  // -- filters -------------------------------------------------------------
  function setup() {
    fill($("f-dataset"), [["", "all"]].concat(uniq(function (q) { return q.ds; }).map(function (v) { return [v, v]; })));
    fill($("f-category"), [["", "all"]].concat(uniq(function (q) { return q.ds + "/" + q.cat; }).map(function (v) { return [v, v]; })));
    fill($("f-type"), [["", "all"]].concat(uniq(function (q) { return q.type; }).map(function (v) { return [v, v]; })));
    fill($("f-status"), [["", "any"], ["c", "correct"], ["w", "wrong"], ["p", "parse failure"], ["e", "error"], ["n", "not asked"]]);
    var runPairs = RUNS.map(function (r, i) { return [String(i), (i + 1) + ": " + r.name]; });
    fill($("f-status-run"), runPairs);
    if (RUNS.length > 1) {
      fill($("f-change"), [["", "any"], ["diff", "answer changed"], ["fixed", "fixed (now right)"], ["broke", "broke (now wrong)"]]);
      fill($("f-change-run"), runPairs.slice(1));
      $("f-change-run").value = String(RUNS.length - 1);
    } else {
      $("change-box").style.display = "none";
      $("status-run-box").style.display = "none";
    }
    ["f-dataset", "f-category", "f-type", "f-status", "f-status-run", "f-change", "f-change-run"].forEach(function (id) {
      $(id).addEventListener("change", apply);
    });
    var timer = null;
    $("f-search").addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
    $("prev").addEventListener("click", function () { go(page - 1); });
    $("next").addEventListener("click", function () { go(page + 1); });
    $("overlay").addEventListener("click", function () { $("overlay").className = ""; });
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape") $("overlay").className = "";
      if (e.target && e.target.tagName === "INPUT") return;
      if (e.key === "ArrowRight") go(page + 1);
      if (e.key === "ArrowLeft") go(page - 1);
    });
  }

  function buildHaystack() {
    haystack = Q.map(function (q) {
      var parts = [q.id, q.q];
      q.a.forEach(function (a) { if (a) { parts.push(a.r || ""); parts.push(a.e || ""); } });
      return parts.join("\n").toLowerCase();
    });
  }

  function apply() {
    var ds = $("f-dataset").value, cat = $("f-category").value, type = $("f-type").value;
    var st = $("f-status").value, sr = +$("f-status-run").value;
    var ch = RUNS.length > 1 ? $("f-change").value : "", cr = RUNS.length > 1 ? +$("f-change-run").value : 0;
    var text = $("f-search").value.trim().toLowerCase();
    if (text && !haystack) buildHaystack();
    view = [];
    for (var i = 0; i < Q.length; i++) {
      var q = Q[i];
      if (ds && q.ds !== ds) continue;
      if (cat && q.ds + "/" + q.cat !== cat) continue;
      if (type && q.type !== type) continue;
      if (st && (q.a[sr] ? q.a[sr].s : "n") !== st) continue;
      if (ch) {
        var c = q.ch[cr];
        if (ch === "diff" ? !(c === "fixed" || c === "broke" || c === "changed") : c !== ch) continue;
      }
      if (text && haystack[i].indexOf(text) < 0) continue;
      view.push(i);
    }
    page = 0;
    render();
  }

  function go(p) {
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    if (p < 0 || p >= pages) return;
    page = p;
    render();
    window.scrollTo(0, $("controls").offsetTop);
  }

  // -- rows ----------------------------------------------------------------
  function figure(idx, caption) {
    var f = el("figure"), im = idx === null || idx === undefined ? null : IMAGES[idx];
    if (im) {
      var img = el("img");
      img.loading = "lazy";
      img.src = im[0];
      img.alt = caption + ": " + im[2];
      img.title = im[2];
      img.addEventListener("click", function () {
        $("overlay-img").src = im[1] || im[0];
        $("overlay-cap").textContent = im[2];
        $("overlay").className = "on";
      });
      f.appendChild(img);
    } else {
      f.appendChild(el("div", "missing", "image not found"));
    }
    f.appendChild(el("figcaption", null, caption));
    return f;
  }

  function traceLines(t, a) {
    var box = el("div");
    if (t && t.retrieval) {
      var r = t.retrieval, line = el("div", "trace");
      line.appendChild(el("b", null, "retrieval" + (r.mode ? " (" + r.mode + ")" : "") + ": "));
      var wrong = r.true_category !== undefined && r.true_category !== null && r.category !== r.true_category;
      line.appendChild(el("span", wrong ? "miss" : null, r.category === null || r.category === undefined ? "unknown" : r.category));
      var rest = [];
      if (wrong) rest.push("true " + r.true_category);
      if (typeof r.score === "number") rest.push("score " + fmt(r.score));
      if (r.runner_up) rest.push("runner-up " + r.runner_up + (typeof r.runner_up_score === "number" ? " " + fmt(r.runner_up_score) : ""));
      if (typeof r.knowledge_chars === "number") rest.push(r.knowledge_chars + " chars");
      if (rest.length) line.appendChild(el("span", null, " · " + rest.join(" · ")));
      box.appendChild(line);
    }
    if (t && t.expert) {
      var x = t.expert, l2 = el("div", "trace");
      l2.appendChild(el("b", null, "expert " + (x.name || "") + " (" + [x.mode, x.style].filter(Boolean).join(", ") + "): "));
      var d = x.decision === true ? "anomalous" : x.decision === false ? "normal" : "uncalibrated";
      var bits = [];
      if (typeof x.score === "number") bits.push("score " + fmt(x.score));
      bits.push("decision " + d);
      if (x.marked !== undefined) bits.push(x.marked ? "marked" : "nothing marked");
      l2.appendChild(el("span", null, bits.join(" · ")));
      box.appendChild(l2);
    }
    var tim = [];
    if (t && t.timings) Object.keys(t.timings).forEach(function (k) { tim.push(k.replace(/_s$/, "") + " " + fmt(t.timings[k], 3) + "s"); });
    if (typeof a.l === "number") tim.push("answer " + fmt(a.l, 3) + "s");
    if (tim.length) {
      var l3 = el("div", "trace");
      l3.appendChild(el("b", null, "timings: "));
      l3.appendChild(el("span", null, tim.join(" · ")));
      box.appendChild(l3);
    }
    if (t && t.other) Object.keys(t.other).forEach(function (k) {
      var l4 = el("div", "trace");
      l4.appendChild(el("b", null, k + ": "));
      l4.appendChild(el("span", null, JSON.stringify(t.other[k])));
      box.appendChild(l4);
    });
    return box;
  }

  function response(text) {
    var pre = el("pre", "resp"), LIM = 600;
    if (text.length <= LIM) { pre.textContent = text; return pre; }
    pre.textContent = text.slice(0, LIM) + "…";
    var b = el("button", "more", "show all");
    b.addEventListener("click", function () { pre.textContent = text; b.remove(); });
    var wrap = el("div");
    wrap.appendChild(pre);
    wrap.appendChild(b);
    return wrap;
  }

  function options(opts, gold, given) {
    var ol = el("ol", "opts");
    Object.keys(opts).forEach(function (k) {
      var cls = k === gold ? "gold" : k === given ? "given-wrong" : null;
      ol.appendChild(el("li", cls, k + ". " + opts[k] + (k === gold ? "  ✓" : "")));
    });
    return ol;
  }

  function answerCell(q, ri) {
    var a = q.a[ri], cell = el("div", "ans");
    cell.appendChild(el("h3", null, (ri + 1) + ": " + RUNS[ri].name));
    if (!a) { cell.appendChild(el("span", "badge n", STATUS.n)); return cell; }
    var head = el("div");
    head.appendChild(el("span", "badge " + a.s, STATUS[a.s]));
    var ch = q.ch[ri];
    if (ri > 0 && (ch === "fixed" || ch === "broke" || ch === "changed")) head.appendChild(el("span", "badge " + ch, ch));
    var opts = a.o || q.o, gold = a.g || q.g;
    var given = a.a ? a.a + (opts[a.a] !== undefined ? ". " + opts[a.a] : "") : "no answer";
    head.appendChild(el("span", null, "answered " + given));
    cell.appendChild(head);
    if (a.o) cell.appendChild(options(a.o, gold, a.a));  // this run showed other options (other seed)
    if (a.e) cell.appendChild(el("div", "err", a.e));
    if (a.r !== null && a.r !== undefined) cell.appendChild(response(a.r));
    cell.appendChild(traceLines(a.t, a));
    if ((a.x !== undefined && a.x !== null) || a.tp) {
      var imgs = el("div", "imgs");
      if (a.tp) a.tp.forEach(function (idx, j) { imgs.appendChild(figure(idx, "template " + (j + 1))); });
      if (a.x !== undefined && a.x !== null) imgs.appendChild(figure(a.x, "expert picture"));
      cell.appendChild(imgs);
    }
    return cell;
  }

  function row(i) {
    var q = Q[i], div = el("div", "q");
    div.dataset.qid = q.id;
    if (RUNS.length > 1) {
      var cr = +$("f-change-run").value, c = q.ch[cr];
      if (c === "fixed" || c === "broke") div.className += " " + c;
    }
    var n = RUNS.length, imgs = el("div", "imgs");
    if (n <= 2) {  // one row: pictures, question, each run's answer
      div.style.gridTemplateColumns = "minmax(200px, 340px) minmax(220px, 340px) repeat(" + n + ", minmax(0, 1fr))";
    } else {  // pictures and question above, the runs side by side below in equal columns: all fit the screen
      var left = Math.ceil(n / 2);
      div.className += " many";
      div.style.gridTemplateColumns = "repeat(" + n + ", minmax(0, 1fr))";
      imgs.style.gridColumn = "1 / span " + left;
    }
    imgs.appendChild(figure(q.img, "query (" + (q.normal ? "normal" : "defective") + ")"));
    q.tp.forEach(function (idx, j) { imgs.appendChild(figure(idx, "template " + (j + 1))); });
    q.dx.forEach(function (idx, j) { imgs.appendChild(figure(idx, "defect example " + (j + 1))); });
    div.appendChild(imgs);
    var qa = el("div");
    qa.appendChild(el("div", "qid", q.id));
    var tags = el("div", "tags");
    [q.ds, q.cat, q.type].forEach(function (s) { tags.appendChild(el("span", null, s)); });
    qa.appendChild(tags);
    qa.appendChild(el("div", "qtext", q.q));
    var first = q.a[0];
    qa.appendChild(options(q.o, q.g, first && !first.o ? first.a : null));
    if (n > 2) qa.style.gridColumn = (Math.ceil(n / 2) + 1) + " / -1";
    div.appendChild(qa);
    for (var r = 0; r < RUNS.length; r++) div.appendChild(answerCell(q, r));
    return div;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    var rows = $("rows");
    rows.textContent = "";
    var frag = document.createDocumentFragment();
    view.slice(page * PAGE, (page + 1) * PAGE).forEach(function (i) { frag.appendChild(row(i)); });
    rows.appendChild(frag);
    if (!view.length) rows.appendChild(el("div", "empty", "No question matches these filters."));
    $("count").textContent = view.length + " of " + Q.length + " questions";
    $("page").textContent = "page " + (page + 1) + " / " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  setup();
  apply();
  document.body.dataset.ready = "1";
  document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
})();
