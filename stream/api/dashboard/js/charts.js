// ECharts (the global `echarts` of vendor/echarts.min.js) behind three verbs: draw a chart into a
// container (created once, updated in place on every refresh), resize, dispose on page change.
// A drawn container carries data-rendered="true" once ECharts has finished rendering it; the
// browser tests wait for that.

const live = new Set();

export const PALETTE = ["#3a6df0", "#1f9d6b", "#e49b1a", "#d64545", "#8a5cd1", "#1aa3b8", "#c2548f", "#7a8699", "#5aa03c", "#b5762c", "#4b5fa8"];

export function draw(el, option) {
  let chart = echarts.getInstanceByDom(el);
  if (!chart) {
    chart = echarts.init(el, null, { renderer: "canvas" });
    chart.on("finished", () => {
      el.dataset.rendered = "true";
    });
    live.add(chart);
  }
  chart.setOption({ color: PALETTE, animationDuration: 300, ...option }, { notMerge: true });
  return chart;
}

export function disposeAll() {
  for (const chart of live) chart.dispose();
  live.clear();
}

window.addEventListener("resize", () => {
  for (const chart of live) chart.resize();
});

/** A horizontal bar chart of labelled counts (largest first as given). */
export function barsOption(labels, values, { name, unit, color } = {}) {
  return {
    grid: { left: 8, right: 48, top: 8, bottom: 8, containLabel: true },
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${v} ${unit || ""}`.trim() },
    xAxis: { type: "value", name: unit || "", nameLocation: "end" },
    yAxis: { type: "category", data: labels, inverse: true },
    series: [{ type: "bar", name: name || "", data: values, label: { show: true, position: "right" }, itemStyle: color ? { color } : undefined }],
  };
}

/** A doughnut of labelled counts; the legend names each slice with its share. */
export function donutOption(labels, values, { unit } = {}) {
  const total = values.reduce((a, b) => a + b, 0) || 1;
  const share = new Map(labels.map((label, i) => [label, values[i] / total]));
  return {
    tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${p.value} ${unit || ""} (${p.percent} %)` },
    legend: {
      type: "scroll",
      orient: "vertical",
      left: "58%",
      top: "middle",
      formatter: (name) => `${name}  ${((share.get(name) ?? 0) * 100).toFixed(1)} %`,
    },
    series: [
      {
        type: "pie",
        radius: ["42%", "70%"],
        center: ["30%", "50%"],
        label: { show: false },
        data: labels.map((label, i) => ({ name: label, value: values[i] })),
      },
    ],
  };
}
