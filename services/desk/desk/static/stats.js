// Charts of the statistics page, drawn with uPlot (vendored: /static/vendor/uplot, MIT).
// Each chart element carries its figures in data-values (JSON): by hour (24 numbers) or by day ({day: n}).
(function () {
  "use strict";
  if (typeof uPlot === "undefined") return;
  var bars = uPlot.paths.bars({ size: [0.7, 40] });

  function draw(el) {
    var values = JSON.parse(el.dataset.values || "null");
    var xs = [], ys = [], labels = [];
    if (el.dataset.kind === "hours") {
      for (var h = 0; h < 24; h++) { xs.push(h); ys.push(values[h] || 0); labels.push(String(h).padStart(2, "0")); }
    } else {
      Object.keys(values).sort().forEach(function (day, i) { xs.push(i); ys.push(values[day]); labels.push(day.slice(5)); });
      if (!xs.length) { el.textContent = "No chats in this range."; el.classList.add("empty"); return; }
    }
    var width = Math.max(260, Math.min(560, el.clientWidth || 480));
    var opts = {
      width: width,
      height: 200,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: [0, Math.max(1, Math.max.apply(null, ys))] } },
      axes: [
        { values: function (u, splits) { return splits.map(function (v) { return labels[v] !== undefined && v % 1 === 0 ? labels[v] : ""; }); } },
        { values: function (u, splits) { return splits.map(function (v) { return v % 1 === 0 ? v : ""; }); } },
      ],
      series: [{}, { label: "Chats", stroke: "#2f6fdf", fill: "rgba(47,111,223,0.35)", paths: bars, points: { show: false } }],
    };
    var plot = new uPlot(opts, [xs, ys], el);
    el.dataset.drawn = "1";
    el.setAttribute("aria-label", labels.map(function (l, i) { return l + ": " + ys[i]; }).join(", "));
    return plot;
  }

  document.querySelectorAll(".chart[data-values]").forEach(draw);
})();
