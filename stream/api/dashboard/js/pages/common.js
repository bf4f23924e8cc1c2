// Pieces several pages share.

import { fill, h, slot } from "../dom.js";
import { time } from "../format.js";
import { t, tagLabel, valueLabel } from "../i18n.js";

/** "exact at <clock> (computed <time>)" for an insights answer's meta. */
function asOf(meta) {
  if (!meta) return "";
  return t("common.asof", { clock: time(meta.clock), computed: time(meta.computed_at) });
}

/** The readable name of an audience ``tag:value``: the value for RFM segments, else "Tag: value". */
export function audienceLabel(name) {
  const at = name.indexOf(":");
  const tag = at < 0 ? name : name.slice(0, at);
  const value = at < 0 ? "" : name.slice(at + 1);
  if (tag === "rfm_segment") return valueLabel(tag, value);
  return `${tagLabel(tag)}: ${valueLabel(tag, value)}`;
}

/** The head of an insights page: a row of figures and the line saying when they were exact. */
export function pageHead() {
  return [slotDiv("kpis"), h("p", { class: "hint", dataset: { slot: "asof" } })];
}

/** Fill the ``pageHead`` of ``root``: the ``figures`` (``kpi`` elements) and ``meta``'s time line. */
export function showHead(root, meta, ...figures) {
  fill(root, "kpis", h("div", { class: "kpis" }, ...figures));
  slot(root, "asof").textContent = asOf(meta);
}

export function chartOf(root, id) {
  return root.querySelector(`[data-chart="${id}"]`);
}

export function slotDiv(name, ...children) {
  return h("div", { dataset: { slot: name } }, ...children);
}

export function profileLink(uid) {
  return h("a", { href: `#/profile/${encodeURIComponent(uid)}`, dataset: { profile: uid } }, uid);
}
