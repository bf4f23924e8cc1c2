// Audience builder: pick tag values (all of / any of / not), see the audience's size and first
// members, export it as CSV. The selection lives in the URL (#/audiences/<terms>) so an audience
// can be bookmarked and shared.

import { download, get } from "../api.js";
import { empty, fill, h, layout } from "../dom.js";
import { int } from "../format.js";
import { t, tagInfo, tagLabel, valueLabel } from "../i18n.js";
import { audienceLabel, profileLink, slotDiv } from "./common.js";

const MODES = ["all", "any", "none"];
const LEVELS = ["L1", "L2", "L3", "model"];
const PREVIEW = 20;

/** "all:rfm_segment:At Risk,none:churn_band:low" <-> [[mode, "tag:value"], ...] */
function parse(arg) {
  const out = new Map();
  for (const part of (arg || "").split(",").filter(Boolean)) {
    const at = part.indexOf(":");
    const mode = part.slice(0, at);
    if (MODES.includes(mode)) out.set(part.slice(at + 1), mode);
  }
  return out;
}

function serialise(selection) {
  return [...selection].map(([term, mode]) => `${mode}:${term}`).join(",");
}

function split(term) {
  const at = term.indexOf(":");
  return [term.slice(0, at), term.slice(at + 1)];
}

/** The API query of a selection: (path OR or...) AND and... AND NOT not...; null without a
 * positive term. */
export function query(selection) {
  const any = [], all = [], none = [];
  for (const [term, mode] of selection) ({ any, all, none })[mode].push(term);
  const head = any.length ? any : all;
  if (!head.length) return null;
  const [tag, value] = split(head[0]);
  return {
    path: `/v1/audiences/${encodeURIComponent(tag)}/${encodeURIComponent(value)}`,
    params: { or: any.slice(1), and: any.length ? all : all.slice(1), not: none },
  };
}

function go(selection) {
  const text = serialise(selection);
  window.location.hash = text ? `#/audiences/${encodeURIComponent(text)}` : "#/audiences";
}

export default {
  id: "audiences",
  nav: "nav.audiences",

  async load(arg) {
    const selection = parse(arg);
    const q = query(selection);
    const [list, result] = await Promise.all([get("/v1/audiences"), q ? get(q.path, { ...q.params, limit: PREVIEW }) : null]);
    return { selection, list, result };
  },

  render(root, { selection, list, result }) {
    layout(root, "audiences", () =>
      h(
        "div",
        { class: "grid" },
        h("div", { class: "card span-7" }, h("h2", {}, t("aud.title")), h("p", { class: "hint" }, t("aud.hint")), slotDiv("picker")),
        h("div", { class: "card span-5 sticky", dataset: { testid: "audience-result" } }, slotDiv("result")),
      ),
    );
    const byTag = new Map();
    for (const a of list.audiences) {
      if (!byTag.has(a.tag)) byTag.set(a.tag, { level: a.level || "other", values: [] });
      byTag.get(a.tag).values.push(a);
    }
    for (const [tag, entry] of byTag) {
      const order = tagInfo(tag)?.values; // the catalogue's order (vip, high, ...), else as listed
      if (order) entry.values.sort((a, b) => order.indexOf(a.value) - order.indexOf(b.value));
    }
    const tags = [...byTag].sort(([, a], [, b]) => LEVELS.indexOf(a.level) - LEVELS.indexOf(b.level));
    fill(
      root,
      "picker",
      h("div", { class: "legend" }, h("span", { class: "chip all" }, t("aud.all")), " ", h("span", { class: "chip any" }, t("aud.any")), " ", h("span", { class: "chip none" }, t("aud.none"))),
      tags.map(([tag, { values }]) =>
        h(
          "div",
          { class: "builder-tag", dataset: { tag } },
          h("div", { class: "name" }, tagLabel(tag)),
          h(
            "div",
            { class: "chips" },
            values.map((a) => {
              const term = `${a.tag}:${a.value}`;
              const mode = selection.get(term);
              return h(
                "button",
                {
                  class: `chip ${mode || ""}`.trim(),
                  dataset: { term, mode: mode || "off", size: a.size },
                  on: {
                    click: () => {
                      const next = new Map(selection);
                      const i = mode ? MODES.indexOf(mode) + 1 : 0;
                      if (i < MODES.length) next.set(term, MODES[i]);
                      else next.delete(term);
                      go(next);
                    },
                  },
                },
                valueLabel(a.tag, a.value),
                h("span", { class: "n" }, int(a.size)),
              );
            }),
          ),
        ),
      ),
    );
    const q = query(selection);
    if (!result || !q) {
      fill(
        root,
        "result",
        h("h2", {}, t("aud.size")),
        empty(t("aud.pick")),
        list.total_users !== null && list.total_users !== undefined ? h("p", { class: "hint" }, t("aud.everyone", { n: int(list.total_users) })) : null,
      );
      return;
    }
    const fields = [...new Set([...selection.keys()].map((term) => split(term)[0]))].join(",");
    fill(
      root,
      "result",
      h("h2", {}, t("aud.size")),
      h("div", { class: "big", dataset: { figure: "audience-size", value: result.size } }, int(result.size), " ", h("span", { class: "hint" }, t("common.users"))),
      h("p", {}, h("span", { class: "hint" }, `${t("aud.expression")}: `), h("code", { dataset: { testid: "expression" } }, result.expression)),
      h(
        "p",
        {},
        [...selection].map(([term, mode]) => h("span", { class: `chip ${mode}` }, audienceLabel(term))),
      ),
      h(
        "p",
        {},
        h(
          "button",
          {
            class: "primary",
            dataset: { testid: "export" },
            on: { click: () => download(`${q.path}:export`, { ...q.params, fields }, `audience-${Date.now()}.csv`).catch((err) => console.warn(err.message)) },
          },
          t("aud.export"),
        ),
        " ",
        h("button", { dataset: { testid: "clear" }, on: { click: () => go(new Map()) } }, t("aud.clear")),
      ),
      h("h2", {}, t("aud.members")),
      result.members.length
        ? h("ul", { dataset: { testid: "members" } }, result.members.map((uid) => h("li", {}, profileLink(uid))))
        : empty(t("common.empty")),
    );
  },
};
