// Overview: users, active users, events/s, RFM segment shares, value tiers, churn bands, trends.

import { get } from "../api.js";
import { barsOption, donutOption, draw } from "../charts.js";
import { card, chartBox, empty, fill, h, kpi, layout } from "../dom.js";
import { int, num, pct, time } from "../format.js";
import { t, tagLabel, valueLabel } from "../i18n.js";
import { audienceLabel, chartOf, pageHead, showHead, slotDiv } from "./common.js";

// Trend lines drawn on the overview; the sentences cover every audience that moved.
const TREND_LINES = ["rfm_segment:At Risk", "rfm_segment:Champions", "rfm_segment:Hibernating", "churn_band:high", "cart_abandoned:true"];
const MIN_TREND_USERS = 5; // audiences smaller than this at both ends are noise in a sentence

export default {
  id: "overview",
  nav: "nav.overview",

  async load() {
    const [overview, trends] = await Promise.all([get("/v1/insights/overview"), get("/v1/insights/trends", { days: 7 })]);
    return { overview, trends };
  },

  render(root, { overview: o, trends }) {
    layout(root, "overview", () => [
      ...pageHead(),
      h(
        "div",
        { class: "grid" },
        card(tagLabel("rfm_segment"), chartBox("rfm-segments", "tall"), { span: 5, id: "rfm-segments" }),
        card(tagLabel("value_tier"), chartBox("value-tiers", "tall"), { span: 4, id: "value-tiers" }),
        card(tagLabel("churn_band"), chartBox("churn-bands", "tall"), { span: 3, id: "churn-bands" }),
      ),
      h(
        "div",
        { class: "grid" },
        card(t("overview.trends"), slotDiv("trend-chart", chartBox("trends")), { span: 7, hint: t("overview.trendsHint") }),
        card(t("overview.trends"), slotDiv("trend-list"), { span: 5, id: "trend-list" }),
      ),
    ]);
    showHead(
      root,
      o.meta,
      kpi("users", t("overview.users"), int(o.users), { raw: o.users }),
      kpi("active_7d", t("overview.active7"), int(o.active_7d), {
        raw: o.active_7d,
        sub: t("overview.ofUsers", { share: pct(o.users ? o.active_7d / o.users : null) }),
      }),
      kpi("active_30d", t("overview.active30"), int(o.active_30d), {
        raw: o.active_30d,
        sub: t("overview.ofUsers", { share: pct(o.users ? o.active_30d / o.users : null) }),
      }),
      kpi("events_per_second", t("overview.eps"), num(o.events_per_second ?? 0, 1), {
        raw: o.events_per_second ?? 0,
        unit: t("common.perSecond"),
      }),
      kpi("events_applied", t("overview.applied"), int(o.events_applied), { raw: o.events_applied }),
    );
    const segments = o.rfm_segments.filter((s) => s.users > 0);
    draw(chartOf(root, "rfm-segments"), donutOption(segments.map((s) => valueLabel("rfm_segment", s.value)), segments.map((s) => s.users), { unit: t("common.users") }));
    draw(chartOf(root, "value-tiers"), barsOption(o.value_tiers.map((s) => valueLabel("value_tier", s.value)), o.value_tiers.map((s) => s.users), { unit: t("common.users") }));
    draw(chartOf(root, "churn-bands"), {
      ...barsOption(o.churn_bands.map((s) => valueLabel("churn_band", s.value)), o.churn_bands.map((s) => s.users), { unit: t("common.users") }),
      color: ["#e49b1a"],
    });
    renderTrends(root, trends);
  },
};

function renderTrends(root, trends) {
  const points = trends.points || [];
  if (points.length < 2) {
    fill(root, "trend-chart", empty(t("overview.noTrends")));
  } else {
    if (!chartOf(root, "trends")) fill(root, "trend-chart", chartBox("trends"));
    const present = TREND_LINES.filter((name) => points.some((p) => name in p.sizes));
    draw(chartOf(root, "trends"), {
      grid: { left: 8, right: 16, top: 56, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis" },
      legend: { type: "scroll", top: 0 },
      xAxis: { type: "time" },
      yAxis: { type: "value", name: t("common.users") },
      series: present.map((name) => ({
        type: "line",
        name: audienceLabel(name),
        showSymbol: false,
        data: points.map((p) => [p.hour, p.sizes[name] ?? 0]),
      })),
    });
  }
  const span = points.length ? (Date.parse(points[points.length - 1].hour) - Date.parse(points[0].hour)) / 3600e3 : 0;
  const period = span >= 6.5 * 24 ? t("trend.week") : span >= 48 ? t("trend.days", { n: Math.round(span / 24) }) : t("trend.hours", { n: Math.round(span) });
  const moved = (trends.changes || [])
    .filter((c) => c.first !== c.last && Math.max(c.first, c.last) >= MIN_TREND_USERS)
    .sort((a, b) => Math.abs(b.last - b.first) - Math.abs(a.last - a.first))
    .slice(0, 8);
  if (!moved.length) {
    fill(root, "trend-list", empty(t("overview.noTrends")));
    return;
  }
  fill(
    root,
    "trend-list",
    h(
      "ul",
      { class: "trend-list" },
      moved.map((c) => {
        const vars = { audience: audienceLabel(c.audience), first: int(c.first), last: int(c.last), pct: pct(c.change === null ? null : Math.abs(c.change), 0), period };
        const key = c.change === null ? "trend.new" : c.last > c.first ? "trend.grew" : c.last < c.first ? "trend.shrank" : "trend.same";
        const cls = c.last > c.first ? "up" : "down";
        return h("li", { class: cls, dataset: { trend: c.audience, first: c.first, last: c.last } }, t(key, vars));
      }),
    ),
    h("p", { class: "hint" }, `${time(trends.since)} → ${time(trends.until)}`),
  );
}
