// Profile card: tags by taxonomy level with labels and units, model scores, recent activity,
// trigger history (why each rule fired or was suppressed) and merged identities.

import { ApiError, get } from "../api.js";
import { empty, fill, h, layout, slot, table } from "../dom.js";
import { int, money, pct, tagValue, time } from "../format.js";
import { t, tagInfo, tagLabel, valueLabel } from "../i18n.js";
import { slotDiv } from "./common.js";

const LEVELS = ["L1", "L2", "L3"];
const SCORES = ["churn_risk", "churn_band", "behaviour_segment", "churn_model"];

function tagList(tags, level) {
  const names = Object.keys(tags || {}).sort((a, b) => tagLabel(a).localeCompare(tagLabel(b)));
  if (!names.length) return empty(t("common.empty"));
  return h(
    "dl",
    { class: "tags", dataset: { level } },
    names.map((name) => [
      h("dt", { title: tagInfo(name)?.description || name }, tagLabel(name)),
      h("dd", { dataset: { tag: name, value: JSON.stringify(tags[name]) } }, tagValue(name, tags[name])),
    ]),
  );
}

const ACTIVITY = ["events", "page_views", "searches", "cart_adds", "checkouts", "orders", "order_value", "refunds", "ratings", "complaints"];

function activityTable(windows) {
  if (!windows || !windows.length) return empty(t("common.empty"));
  return table(
    ["", ...windows.map((w) => ({ text: t("recent.window", { days: w.days }), class: "num" }))],
    ACTIVITY.map((key) =>
      h(
        "tr",
        { dataset: { recent: key } },
        h("td", {}, t(`recent.${key}`)),
        windows.map((w) => h("td", { class: "num", dataset: { value: w[key], days: w.days } }, key === "order_value" ? money(w[key]) : int(w[key]))),
      ),
    ),
    { id: "activity" },
  );
}

function triggerTable(firings) {
  if (!firings.length) return empty(t("profile.noTriggers"));
  return table(
    [t("profile.at"), t("profile.rule"), t("profile.channel"), t("profile.outcome"), t("profile.reason")],
    [...firings].reverse().map((f) =>
      h(
        "tr",
        { dataset: { trigger: f.trigger_id, outcome: f.outcome } },
        h("td", {}, time(f.at)),
        h("td", {}, f.rule_id, h("span", { class: "hint" }, ` v${f.rule_version}`)),
        h("td", {}, f.channel),
        h("td", {}, h("span", { class: `badge ${f.outcome}` }, t(`outcome.${f.outcome}`))),
        h("td", {}, f.reason ? t(`reason.${f.reason}`) : t("reason.fired")),
      ),
    ),
    { id: "triggers" },
  );
}

export default {
  id: "profile",
  nav: "nav.profile",

  async load(uid) {
    if (!uid) return { uid: null };
    try {
      const profile = await get(`/v1/profiles/${encodeURIComponent(uid)}`, { group_by: "level", include: "activity,history,identities" });
      return { uid, profile };
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return { uid, missing: true };
      throw err;
    }
  },

  render(root, data) {
    const built = layout(root, "profile", () => [
      h(
        "form",
        { class: "search", dataset: { slot: "search" } },
        h("input", { name: "uid", placeholder: t("profile.search"), dataset: { testid: "uid" } }),
        h("button", { class: "primary", type: "submit" }, t("profile.open")),
      ),
      slotDiv("card"),
    ]);
    const form = slot(root, "search");
    if (built) {
      form.uid.value = data.uid || "";
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = form.uid.value.trim();
        if (value) window.location.hash = `#/profile/${encodeURIComponent(value)}`;
      });
    }
    if (!data.uid) {
      fill(root, "card", empty(t("profile.prompt")));
      return;
    }
    if (data.missing) {
      fill(root, "card", empty(t("profile.missing", { id: data.uid })));
      return;
    }
    const { profile: p } = data;
    const scores = p.scores || {};
    fill(
      root,
      "card",
      h(
        "div",
        { class: "card", dataset: { testid: "profile-card", user: p.user_id } },
        h(
          "div",
          { class: "profile-head" },
          h("span", { class: "uid", dataset: { testid: "profile-uid" } }, p.user_id),
          p.rfm_segment ? h("span", { class: "badge" }, valueLabel("rfm_segment", p.rfm_segment)) : null,
          p.churn_band ? h("span", { class: `badge ${p.churn_band}` }, `${tagLabel("churn_band")}: ${valueLabel("churn_band", p.churn_band)}`) : null,
          h("span", { class: "hint" }, `${t("profile.evaluated")}: ${time(p.evaluated_at)}`),
          h("span", { class: "hint" }, `${t("profile.updated")}: ${time(p.updated_at)}`),
        ),
        p.requested_id ? h("p", { class: "hint" }, t("profile.requested", { id: p.requested_id })) : null,
      ),
      h(
        "div",
        { class: "grid" },
        ...LEVELS.map((level) => h("div", { class: "card span-4" }, h("h2", {}, t(`level.${level}`)), tagList(p.tags_by_level?.[level], level))),
      ),
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "card span-4", dataset: { testid: "scores" } },
          h("h2", {}, t("profile.scores")),
          h(
            "dl",
            { class: "tags" },
            SCORES.map((name) => [
              h("dt", {}, tagLabel(name)),
              h("dd", { dataset: { score: name, value: JSON.stringify(scores[name] ?? null) } }, name === "churn_risk" ? pct(scores[name]) : valueLabel(name, scores[name])),
            ]),
          ),
        ),
        h("div", { class: "card span-4", dataset: { testid: "recent" } }, h("h2", {}, t("profile.events")), activityTable(p.activity)),
        h(
          "div",
          { class: "card span-4", dataset: { testid: "identities" } },
          h("h2", {}, t("profile.identities")),
          (p.identities || []).length
            ? h("ul", {}, p.identities.map((m) => h("li", { dataset: { merged: m.subject } }, m.subject, " ", h("span", { class: "hint" }, time(m.linked_at)))))
            : empty(t("profile.noIdentities")),
        ),
      ),
      h(
        "div",
        { class: "grid" },
        h("div", { class: "card span-12", dataset: { testid: "trigger-history" } }, h("h2", {}, t("profile.triggers")), h("p", { class: "hint" }, t("profile.triggersHint")), triggerTable(p.history || [])),
      ),
    );
  },
};
