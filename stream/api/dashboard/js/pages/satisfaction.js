// Satisfaction: average rating, NPS, complaints, satisfaction classes.

import { get } from "../api.js";
import { donutOption, draw } from "../charts.js";
import { card, chartBox, h, kpi, layout } from "../dom.js";
import { int, num } from "../format.js";
import { t, tagLabel, valueLabel } from "../i18n.js";
import { chartOf, pageHead, showHead } from "./common.js";

export default {
  id: "satisfaction",
  nav: "nav.satisfaction",

  load() {
    return get("/v1/insights/satisfaction");
  },

  render(root, s) {
    layout(root, "satisfaction", () => [
      ...pageHead(),
      h(
        "div",
        { class: "grid" },
        card(tagLabel("satisfaction"), chartBox("satisfaction-classes", "tall"), { span: 6, id: "satisfaction-classes" }),
        card(t("sat.nps_groups"), chartBox("nps-groups", "tall"), { span: 6, id: "nps-groups" }),
      ),
    ]);
    showHead(
      root,
      s.meta,
      kpi("average_rating", t("sat.rating"), num(s.average_rating, 2), { raw: s.average_rating, unit: "/ 5", sub: t("sat.rated", { n: int(s.rated_users) }) }),
      kpi("nps", t("sat.nps"), s.nps === null ? "–" : num(s.nps, 1), { raw: s.nps, sub: t("sat.npsHint") }),
      kpi("complaints", t("sat.complaints"), int(s.complaints), { raw: s.complaints, sub: t("sat.complainers", { n: int(s.users_with_complaints) }) }),
      kpi("promoters", t("sat.promoters"), int(s.promoters), { raw: s.promoters, unit: t("common.users") }),
      kpi("detractors", t("sat.detractors"), int(s.detractors), { raw: s.detractors, unit: t("common.users") }),
    );
    draw(chartOf(root, "satisfaction-classes"), {
      ...donutOption(s.classes.map((c) => valueLabel("satisfaction", c.value)), s.classes.map((c) => c.users), { unit: t("common.users") }),
      color: ["#1f9d6b", "#7a8699", "#d64545"],
    });
    draw(chartOf(root, "nps-groups"), {
      grid: { left: 8, right: 40, top: 8, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", data: [t("sat.promoters"), t("sat.passives"), t("sat.detractors")] },
      yAxis: { type: "value", name: t("common.users") },
      series: [
        {
          type: "bar",
          data: [
            { value: s.promoters, itemStyle: { color: "#1f9d6b" } },
            { value: s.passives, itemStyle: { color: "#7a8699" } },
            { value: s.detractors, itemStyle: { color: "#d64545" } },
          ],
          label: { show: true, position: "top" },
        },
      ],
    });
  },
};
