// Draws the charts of a caio-bench report with uPlot (embedded in the same page).
// Reads the specs from <script id="caio-chart-data">; each chart goes into #chart-<key>.
// Hover shows values in the legend; drag to zoom, double-click to reset; click a legend
// entry to hide or show its series. Each drawn chart's box gets data-drawn="<series shown>";
// window.caioCharts maps each chart's key to its uPlot instance.
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var specs = JSON.parse(document.getElementById("caio-chart-data").textContent);
  var plots = [];
  window.caioCharts = {};

  function seriesOpts(s, i) {
    var color = s.color || PALETTE[i % PALETTE.length];
    var o = {label: s.label, stroke: color, width: 1.5, spanGaps: true};
    if (s.dash) o.dash = [6, 4];
    if (s.kind === "points") {
      o.paths = function () { return null; };
      o.points = {show: true, size: 5, stroke: color, fill: color};
    } else if (s.kind === "step") {
      o.paths = uPlot.paths.stepped({align: 1});
      o.points = {show: false};
    } else if (s.kind === "bars") {
      o.paths = uPlot.paths.bars({size: [0.6, 80]});
      o.fill = color;
      o.points = {show: false};
    } else {
      o.points = {show: function (u, si) { return u.data[0].length < 60; }, size: 5};
    }
    return o;
  }

  function xAxis(spec) {
    var axis = {label: spec.x_label};
    if (spec.x_names.length) {
      axis.values = function (u, splits) {
        return splits.map(function (v) { return spec.x_names[v] !== undefined &&
          Number.isInteger(v) ? spec.x_names[v] : ""; });
      };
    }
    return axis;
  }

  function xSeries(spec) {
    var s = {label: spec.x_label};
    if (spec.x_names.length) {
      s.value = function (u, v) { return v == null ? "--" : spec.x_names[Math.round(v)]; };
    } else if (!spec.x_time) {
      s.value = function (u, v) { return v == null ? "--" : String(+v.toPrecision(6)); };
    }
    return s;
  }

  function width(el) { return Math.max(320, el.clientWidth || 800); }

  specs.forEach(function (spec) {
    var el = document.getElementById("chart-" + spec.key);
    if (!el) return;
    var y = {};
    if (spec.y_log) y.distr = 3;
    if (spec.y_min !== null || spec.y_max !== null) {
      y.range = function (u, lo, hi) {
        return [spec.y_min !== null ? spec.y_min : lo, spec.y_max !== null ? spec.y_max : hi];
      };
    }
    var x = {time: spec.x_time};
    if (spec.x_names.length) x.range = function () { return [-0.5, spec.x_names.length - 0.5]; };
    var opts = {
      width: width(el), height: spec.height,
      scales: {x: x, y: y},
      axes: [xAxis(spec), {label: spec.y_label, size: 60}],
      series: [xSeries(spec)].concat(spec.series.map(seriesOpts)),
      cursor: {drag: {x: true, y: false}},
      legend: {live: true},
      hooks: {draw: [function (u) {
        el.dataset.drawn = String(u.series.filter(function (s, i) {
          return i > 0 && s.show;
        }).length);
      }]}
    };
    var plot = new uPlot(opts, spec.data, el);
    window.caioCharts[spec.key] = plot;
    plots.push([el, plot]);
  });

  window.addEventListener("resize", function () {
    plots.forEach(function (p) { p[1].setSize({width: width(p[0]), height: p[1].height}); });
  });
})();
