// Churn warning (流失预警): the risk histogram, the bands, and the valuable users most at risk,
// each linking to the profile card.

import { get } from "../api.js";
import { donutOption, draw } from "../charts.js";
import { card, chartBox, empty, fill, h, kpi, layout, table } from "../dom.js";
import { int, money, pct } from "../format.js";
import { t, valueLabel } from "../i18n.js";
import { chartOf, pageHead, profileLink, showHead, slotDiv } from "./common.js";

export default {
  id: "churn",
  nav: "nav.churn",

  load() {
    return get("/v1/insights/churn", { limit: 50 });
  },

  render(root, c) {
    layout(root, "churn", () => [
      ...pageHead(),
      h(
        "div",
        { class: "grid" },
        card(t("churn.histogram"), chartBox("churn-histogram"), { span: 8, hint: t("churn.histHint"), id: "churn-histogram" }),
        card(t("overview.bands"), chartBox("churn-bands"), { span: 4, id: "churn-bands" }),
      ),
      h("div", { class: "grid" }, card(t("churn.list"), slotDiv("list"), { span: 12, id: "at-risk" })),
    ]);
    showHead(
      root,
      c.meta,
      kpi("scored_users", t("churn.scored"), int(c.scored_users), { raw: c.scored_users }),
      ...c.bands.map((b) => kpi(`band_${b.value}`, valueLabel("churn_band", b.value), int(b.users), { raw: b.users, sub: pct(b.share) })),
    );
    draw(chartOf(root, "churn-histogram"), {
      grid: { left: 8, right: 16, top: 24, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", name: t("churn.risk"), data: c.histogram.map((b) => `${Math.round(b.low * 100)}–${Math.round(b.high * 100)} %`) },
      yAxis: { type: "value", name: t("common.users") },
      series: [
        {
          type: "bar",
          data: c.histogram.map((b) => b.users),
          itemStyle: { color: (p) => (p.dataIndex >= 7 ? "#d64545" : p.dataIndex >= 4 ? "#e49b1a" : "#1f9d6b") },
        },
      ],
    });
    draw(chartOf(root, "churn-bands"), {
      ...donutOption(c.bands.map((b) => valueLabel("churn_band", b.value)), c.bands.map((b) => b.users), { unit: t("common.users") }),
      color: ["#1f9d6b", "#e49b1a", "#d64545"],
    });
    const tiers = c.valuable_tiers.map((v) => valueLabel("value_tier", v)).join(", ");
    const list = c.at_risk_valuable;
    fill(
      root,
      "list",
      h("p", { class: "hint" }, t("churn.listHint", { tiers })),
      list.length
        ? table(
            [
              t("common.user"),
              { text: t("churn.risk"), class: "num" },
              t("churn.band"),
              t("churn.tier"),
              { text: t("churn.monetary"), class: "num" },
              t("churn.segment"),
              { text: t("churn.sinceOrder"), class: "num" },
            ],
            list.map((u) =>
              h(
                "tr",
                { dataset: { user: u.user_id } },
                h("td", {}, profileLink(u.user_id)),
                h("td", { class: "num", dataset: { value: u.churn_risk } }, pct(u.churn_risk)),
                h("td", {}, h("span", { class: `badge ${u.churn_band || ""}` }, valueLabel("churn_band", u.churn_band))),
                h("td", {}, valueLabel("value_tier", u.value_tier)),
                h("td", { class: "num", dataset: { value: u.monetary_90d } }, money(u.monetary_90d)),
                h("td", {}, valueLabel("rfm_segment", u.rfm_segment)),
                h("td", { class: "num", dataset: { value: u.days_since_last_order } }, u.days_since_last_order ?? "–"),
              ),
            ),
            { id: "at-risk-list" },
          )
        : empty(t("common.empty")),
    );
  },
};
