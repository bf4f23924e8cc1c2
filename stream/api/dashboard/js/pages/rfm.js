// RFM grid: users per (recency score, frequency score) cell with the cell's average spend.

import { get } from "../api.js";
import { draw } from "../charts.js";
import { card, chartBox, fill, h, kpi, layout, table } from "../dom.js";
import { int, money } from "../format.js";
import { t } from "../i18n.js";
import { chartOf, pageHead, showHead, slotDiv } from "./common.js";

export default {
  id: "rfm",
  nav: "nav.rfm",

  load() {
    return get("/v1/insights/rfm");
  },

  render(root, grid) {
    layout(root, "rfm", () => [
      ...pageHead(),
      h(
        "div",
        { class: "grid" },
        card(t("rfm.title"), chartBox("rfm-grid", "tall"), { span: 7, hint: t("rfm.hint"), id: "rfm-grid" }),
        card(t("rfm.cells"), slotDiv("cells"), { span: 5 }),
      ),
    ]);
    const withBuyers = grid.cells.filter((c) => c.users > 0);
    const spend = withBuyers.reduce((sum, c) => sum + c.users * (c.avg_monetary ?? 0), 0);
    showHead(
      root,
      grid.meta,
      kpi("buyers", t("rfm.buyers"), int(grid.buyers), { raw: grid.buyers }),
      kpi("avg_monetary", t("rfm.avgM"), money(grid.buyers ? spend / grid.buyers : null, grid.unit), {}),
    );
    const max = Math.max(1, ...grid.cells.map((c) => c.users));
    draw(chartOf(root, "rfm-grid"), {
      tooltip: {
        formatter: (p) => {
          const [fi, ri, users, avg] = p.data;
          return `R ${ri + 1} · F ${fi + 1}<br>${int(users)} ${t("common.users")}<br>${t("rfm.avgM")}: ${money(avg, grid.unit)}`;
        },
      },
      grid: { left: 8, right: 16, top: 16, bottom: 48, containLabel: true },
      xAxis: { type: "category", data: ["1", "2", "3", "4", "5"], name: t("rfm.f"), nameLocation: "middle", nameGap: 28 },
      yAxis: { type: "category", data: ["1", "2", "3", "4", "5"], name: t("rfm.r"), nameLocation: "middle", nameGap: 28 },
      visualMap: { min: 0, max, dimension: 2, calculable: false, orient: "horizontal", left: "center", bottom: 0, show: false, inRange: { color: ["#eef3ff", "#3a6df0"] } },
      series: [
        {
          type: "heatmap",
          // [x = f - 1, y = r - 1, users, avg]
          data: grid.cells.map((c) => [c.f - 1, c.r - 1, c.users, c.avg_monetary]),
          label: { show: true, formatter: (p) => int(p.data[2]) },
          encode: { x: 0, y: 1, value: 2 },
        },
      ],
    });
    fill(
      root,
      "cells",
      table(
        ["R", "F", { text: t("common.users"), class: "num" }, { text: t("rfm.avgM"), class: "num" }],
        grid.cells
          .filter((c) => c.users > 0)
          .map((c) =>
            h(
              "tr",
              { dataset: { r: c.r, f: c.f } },
              h("td", {}, c.r),
              h("td", {}, c.f),
              h("td", { class: "num", dataset: { value: c.users } }, int(c.users)),
              h("td", { class: "num", dataset: { value: c.avg_monetary } }, money(c.avg_monetary, grid.unit)),
            ),
          ),
        { id: "rfm-cells" },
      ),
    );
  },
};
