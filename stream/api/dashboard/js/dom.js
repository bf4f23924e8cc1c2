// Small DOM builders shared by the pages.

/** An element: ``h("td", {class: "num", dataset: {value: 3}}, "3")``; children are nodes or text. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[k] = String(v);
    } else if (key === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (key === "class") {
      el.className = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A headline figure; ``raw`` (the API's number) goes into data-value for the tests. */
export function kpi(id, label, text, { unit, sub, raw } = {}) {
  return h(
    "div",
    { class: "kpi", dataset: { testid: id } },
    h("div", { class: "label" }, label),
    h("div", { class: "value", dataset: { figure: id, value: raw } }, text, unit ? h("span", { class: "unit" }, unit) : null),
    sub ? h("div", { class: "sub" }, sub) : null,
  );
}

/** A panel with a title (and an optional hint line) holding ``body``. */
export function card(title, body, { hint, span = 6, id } = {}) {
  return h("div", { class: `card span-${span}`, dataset: { testid: id } }, h("h2", {}, title), hint ? h("p", { class: "hint" }, hint) : null, body);
}

/** A chart container; ``id`` names it for the tests (data-chart). */
export function chartBox(id, size = "") {
  return h("div", { class: `chart ${size}`.trim(), dataset: { chart: id } });
}

export function table(headers, rows, { id } = {}) {
  return h(
    "table",
    { dataset: { testid: id } },
    h("thead", {}, h("tr", {}, headers.map((x) => (typeof x === "string" ? h("th", {}, x) : h("th", { class: x.class }, x.text))))),
    h("tbody", {}, rows),
  );
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

/** Build the page's layout once per page visit (``key``); true when it was (re)built. */
export function layout(root, key, build) {
  if (root.dataset.layout === key) return false;
  root.replaceChildren(...[build()].flat());
  root.dataset.layout = key;
  return true;
}

/** The element of ``root`` marked data-slot=``name``. */
export function slot(root, name) {
  return root.querySelector(`[data-slot="${name}"]`);
}

/** Fill a slot with new children. */
export function fill(root, name, ...children) {
  slot(root, name).replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
