// Activity by local hour of week (heatmap) and the top categories.

import { get } from "../api.js";
import { draw } from "../charts.js";
import { card, chartBox, fill, h, kpi, layout, table } from "../dom.js";
import { int } from "../format.js";
import { language, t } from "../i18n.js";
import { chartOf, pageHead, showHead, slotDiv } from "./common.js";

const DAYS = { en: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], zh: ["周一", "周二", "周三", "周四", "周五", "周六", "周日"] };
const HOURS = Array.from({ length: 24 }, (_, i) => `${String(i).padStart(2, "0")}:00`);

export default {
  id: "activity",
  nav: "nav.activity",

  async load() {
    const [activity, categories] = await Promise.all([get("/v1/insights/activity"), get("/v1/insights/categories", { limit: 15 })]);
    return { activity, categories };
  },

  render(root, { activity, categories }) {
    layout(root, "activity", () => [
      ...pageHead(),
      h("div", { class: "grid" }, card(t("activity.title", { days: activity.window_days }), chartBox("activity-heatmap", "tall"), { span: 12, id: "activity" })),
      h(
        "div",
        { class: "grid" },
        card(t("activity.categories"), chartBox("categories", "tall"), { span: 7, id: "categories-chart" }),
        card(t("activity.categories"), slotDiv("categories"), { span: 5 }),
      ),
    ]);
    showHead(root, activity.meta, kpi("activity_total", t("activity.total"), int(activity.total), { raw: activity.total }));
    const days = DAYS[language()] || DAYS.en;
    const cells = [];
    let max = 1;
    activity.counts.forEach((row, d) =>
      row.forEach((n, hour) => {
        cells.push([hour, d, n]);
        max = Math.max(max, n);
      }),
    );
    draw(chartOf(root, "activity-heatmap"), {
      tooltip: { formatter: (p) => `${days[p.data[1]]} ${HOURS[p.data[0]]}: ${int(p.data[2])}` },
      grid: { left: 8, right: 16, top: 8, bottom: 40, containLabel: true },
      xAxis: { type: "category", data: HOURS, splitArea: { show: true } },
      yAxis: { type: "category", data: days, inverse: true, splitArea: { show: true } },
      visualMap: { min: 0, max, dimension: 2, orient: "horizontal", left: "center", bottom: 0, itemHeight: 120, inRange: { color: ["#f4f7ff", "#3a6df0", "#18307a"] } },
      series: [{ type: "heatmap", data: cells, emphasis: { itemStyle: { borderColor: "#333", borderWidth: 1 } } }],
    });
    const cats = categories.categories;
    draw(chartOf(root, "categories"), {
      grid: { left: 8, right: 24, top: 30, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      legend: { top: 0 },
      xAxis: { type: "value", name: t("common.users") },
      yAxis: { type: "category", data: cats.map((c) => c.category), inverse: true },
      series: [
        { type: "bar", name: t("activity.catUsers"), data: cats.map((c) => c.users) },
        { type: "bar", name: t("activity.catFirst"), data: cats.map((c) => c.first) },
      ],
    });
    fill(
      root,
      "categories",
      table(
        [t("activity.category"), { text: t("activity.catUsers"), class: "num" }, { text: t("activity.catFirst"), class: "num" }],
        cats.map((c) =>
          h(
            "tr",
            { dataset: { category: c.category } },
            h("td", {}, c.category),
            h("td", { class: "num", dataset: { value: c.users } }, int(c.users)),
            h("td", { class: "num", dataset: { value: c.first } }, int(c.first)),
          ),
        ),
        { id: "categories" },
      ),
    );
  },
};
