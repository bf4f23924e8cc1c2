// Behaviour segments: sizes now, the model's share, readable descriptions.

import { get } from "../api.js";
import { barsOption, draw } from "../charts.js";
import { card, chartBox, empty, fill, h, layout, slot, table } from "../dom.js";
import { int, pct } from "../format.js";
import { t } from "../i18n.js";
import { chartOf, slotDiv } from "./common.js";

export default {
  id: "segments",
  nav: "nav.segments",

  load() {
    return get("/v1/insights/segments");
  },

  render(root, s) {
    layout(root, "segments", () => [
      h("p", { class: "hint", dataset: { slot: "version" } }),
      h(
        "div",
        { class: "grid" },
        card(t("seg.title"), chartBox("segments", "tall"), { span: 5, hint: t("seg.hint"), id: "segments-chart" }),
        card(t("seg.title"), slotDiv("table"), { span: 7 }),
      ),
    ]);
    slot(root, "version").textContent = s.model_version ? t("seg.version", { v: s.model_version }) : "";
    const rows = [...s.segments].sort((a, b) => b.users - a.users);
    draw(chartOf(root, "segments"), barsOption(rows.map((x) => x.segment_id), rows.map((x) => x.users), { unit: t("common.users") }));
    fill(
      root,
      "table",
      rows.length
        ? table(
            [t("seg.id"), t("seg.description"), { text: t("seg.users"), class: "num" }, { text: t("seg.share"), class: "num" }],
            rows.map((x) =>
              h(
                "tr",
                { dataset: { segment: x.segment_id } },
                h("td", {}, x.segment_id),
                h("td", {}, x.description || "–"),
                h("td", { class: "num", dataset: { value: x.users } }, int(x.users)),
                h("td", { class: "num", dataset: { value: x.share } }, x.share === null || x.share === undefined ? "–" : pct(x.share)),
              ),
            ),
            { id: "segments" },
          )
        : empty(t("common.empty")),
    );
  },
};
