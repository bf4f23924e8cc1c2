// Rules and their measured effect: sends, suppressions by reason, conversion of treated (sent)
// vs control (held out) users, and the uplift with its 95 % interval (the closed loop).

import { get } from "../api.js";
import { draw } from "../charts.js";
import { card, chartBox, empty, fill, h, layout, table } from "../dom.js";
import { int, pct, points } from "../format.js";
import { t } from "../i18n.js";
import { chartOf, slotDiv } from "./common.js";

function closed(g) {
  return g.conversions + g.expired;
}

function groupText(g) {
  return t("rules.exposures", { conv: int(g.conversions), closed: int(closed(g)), open: int(g.open) });
}

function upliftText(r) {
  if (r.uplift === null || r.uplift === undefined) return "–";
  const ci = r.uplift_ci95 ? ` [${points(r.uplift_ci95[0])}, ${points(r.uplift_ci95[1])}]` : "";
  return `${points(r.uplift)}${ci}`;
}

// A whisker (the 95 % interval) per rule, drawn over the uplift bars.
function whiskers(params, api) {
  const x = api.value(0);
  const low = api.coord([x, api.value(1)]);
  const high = api.coord([x, api.value(2)]);
  const half = api.size([1, 0])[0] * 0.12;
  const style = { stroke: "#1f2733", lineWidth: 1.5 };
  return {
    type: "group",
    children: [
      { type: "line", shape: { x1: low[0], y1: low[1], x2: high[0], y2: high[1] }, style },
      { type: "line", shape: { x1: low[0] - half, y1: low[1], x2: low[0] + half, y2: low[1] }, style },
      { type: "line", shape: { x1: high[0] - half, y1: high[1], x2: high[0] + half, y2: high[1] }, style },
    ],
  };
}

export default {
  id: "rules",
  nav: "nav.rules",

  load() {
    return get("/v1/insights/rules");
  },

  render(root, data) {
    layout(root, "rules", () => [
      h("p", { class: "hint" }, t("rules.hint")),
      h(
        "div",
        { class: "grid" },
        card(t("rules.rates"), chartBox("rule-rates"), { span: 6, id: "rule-rates" }),
        card(t("rules.uplift"), chartBox("rule-uplift"), { span: 6, id: "rule-uplift" }),
      ),
      h("div", { class: "grid" }, card(t("rules.title"), slotDiv("table"), { span: 12 })),
    ]);
    const rules = data.rules;
    const names = rules.map((r) => r.rule_id);
    draw(chartOf(root, "rule-rates"), {
      grid: { left: 8, right: 16, top: 30, bottom: 8, containLabel: true },
      legend: { top: 0 },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => (v === null ? "–" : `${v} %`) },
      xAxis: { type: "value", name: "%", max: (v) => Math.max(10, Math.ceil(v.max / 10) * 10) },
      yAxis: { type: "category", data: names, inverse: true },
      series: [
        { type: "bar", name: t("rules.treated"), data: rules.map((r) => (r.treated.rate === null ? null : +(r.treated.rate * 100).toFixed(1))) },
        { type: "bar", name: t("rules.control"), data: rules.map((r) => (r.control.rate === null ? null : +(r.control.rate * 100).toFixed(1))), itemStyle: { color: "#7a8699" } },
      ],
    });
    draw(chartOf(root, "rule-uplift"), {
      grid: { left: 8, right: 16, top: 16, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 3 ? 20 : 0 } },
      yAxis: { type: "value", name: "pp" },
      series: [
        {
          type: "bar",
          name: t("rules.uplift"),
          data: rules.map((r) => (r.uplift === null ? null : +(r.uplift * 100).toFixed(2))),
          itemStyle: { color: (p) => (p.value >= 0 ? "#1f9d6b" : "#d64545") },
        },
        {
          type: "custom",
          name: "95 % CI",
          renderItem: whiskers,
          encode: { x: 0, y: [1, 2] },
          data: rules.map((r, i) => (r.uplift_ci95 ? [i, +(r.uplift_ci95[0] * 100).toFixed(2), +(r.uplift_ci95[1] * 100).toFixed(2)] : [i, null, null])).filter((d) => d[1] !== null),
          z: 10,
        },
      ],
    });
    fill(
      root,
      "table",
      rules.length
        ? table(
            [
              t("rules.rule"),
              { text: t("rules.firings"), class: "num" },
              t("rules.suppressed"),
              { text: t("rules.treated"), class: "num" },
              { text: t("rules.control"), class: "num" },
              { text: t("rules.uplift"), class: "num" },
            ],
            rules.map((r) =>
              h(
                "tr",
                { dataset: { rule: r.rule_id } },
                h("td", {}, r.rule_id),
                h("td", { class: "num", dataset: { value: r.firings } }, int(r.firings)),
                h(
                  "td",
                  { dataset: { value: Object.values(r.suppressed).reduce((a, b) => a + b, 0) } },
                  Object.entries(r.suppressed).map(([why, n]) => h("span", { class: "badge suppressed", dataset: { reason: why, value: n } }, `${why} ${int(n)}`, " ")),
                ),
                h("td", { class: "num", dataset: { value: r.treated.rate } }, pct(r.treated.rate), h("div", { class: "hint" }, groupText(r.treated))),
                h("td", { class: "num", dataset: { value: r.control.rate } }, pct(r.control.rate), h("div", { class: "hint" }, groupText(r.control))),
                h("td", { class: "num", dataset: { value: r.uplift } }, upliftText(r)),
              ),
            ),
            { id: "rules" },
          )
        : empty(t("rules.none")),
    );
  },
};
