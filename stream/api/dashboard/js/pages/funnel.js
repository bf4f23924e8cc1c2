// Funnel over 7 days: users per deepest stage reached, step-to-step conversion, cart abandonment.

import { get } from "../api.js";
import { draw } from "../charts.js";
import { card, chartBox, fill, h, kpi, layout, table } from "../dom.js";
import { int, pct } from "../format.js";
import { t, valueLabel } from "../i18n.js";
import { chartOf, pageHead, showHead, slotDiv } from "./common.js";

export default {
  id: "funnel",
  nav: "nav.funnel",

  load() {
    return get("/v1/insights/funnel");
  },

  render(root, funnel) {
    layout(root, "funnel", () => [
      ...pageHead(),
      h(
        "div",
        { class: "grid" },
        card(t("funnel.title", { days: funnel.window_days }), chartBox("funnel", "tall"), { span: 7, id: "funnel-chart" }),
        card(t("funnel.conversion"), slotDiv("steps"), { span: 5 }),
      ),
    ]);
    showHead(
      root,
      funnel.meta,
      kpi("cart_abandonment_rate", t("funnel.abandonRate"), pct(funnel.cart_abandonment_rate), { raw: funnel.cart_abandonment_rate }),
      kpi("cart_abandoned", t("funnel.abandoned"), int(funnel.cart_abandoned), { raw: funnel.cart_abandoned, unit: t("common.users") }),
      kpi("carted", t("funnel.carted"), int(funnel.carted), { raw: funnel.carted, unit: t("common.users") }),
    );
    const top = Math.max(1, funnel.steps[0]?.users ?? 1);
    draw(chartOf(root, "funnel"), {
      tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${int(p.value)} ${t("common.users")}` },
      series: [
        {
          type: "funnel",
          sort: "none",
          left: "10%",
          width: "80%",
          min: 0,
          max: top,
          minSize: "8%",
          label: { show: true, position: "inside", formatter: (p) => `${p.name}\n${int(p.value)}` },
          data: funnel.steps.map((s) => ({ name: valueLabel("funnel_stage_7d", s.stage), value: s.users })),
        },
      ],
    });
    fill(
      root,
      "steps",
      table(
        [t("funnel.stage"), { text: t("funnel.users"), class: "num" }, { text: t("funnel.conversion"), class: "num" }],
        funnel.steps.map((s) =>
          h(
            "tr",
            { dataset: { stage: s.stage } },
            h("td", {}, valueLabel("funnel_stage_7d", s.stage)),
            h("td", { class: "num", dataset: { value: s.users } }, int(s.users)),
            h("td", { class: "num", dataset: { value: s.conversion } }, s.conversion === null ? "–" : pct(s.conversion)),
          ),
        ),
        { id: "funnel-steps" },
      ),
    );
  },
};
