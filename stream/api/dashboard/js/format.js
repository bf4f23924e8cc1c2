// Numbers, shares, money and times for display. The raw value of every figure a test checks is
// kept next to it (data-value), so the shown text can be rounded for people.

import { baseCurrency, language, tagInfo, unitLabel, valueLabel } from "./i18n.js";

function locale() {
  return language() === "zh" ? "zh-CN" : "en-US";
}

export function int(n) {
  if (n === null || n === undefined) return "–";
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: 0 }).format(n);
}

export function num(n, digits = 2) {
  if (n === null || n === undefined) return "–";
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(n);
}

/** A fraction in [0, 1] as a percentage. */
export function pct(fraction, digits = 1) {
  if (fraction === null || fraction === undefined) return "–";
  return `${(fraction * 100).toFixed(digits)} %`;
}

/** A signed difference of fractions as percentage points. */
export function points(fraction, digits = 1) {
  if (fraction === null || fraction === undefined) return "–";
  const sign = fraction > 0 ? "+" : fraction < 0 ? "−" : "±";
  return `${sign}${Math.abs(fraction * 100).toFixed(digits)} pp`;
}

export function money(amount, currency) {
  if (amount === null || amount === undefined) return "–";
  const code = currency || baseCurrency();
  try {
    return new Intl.NumberFormat(locale(), { style: "currency", currency: code }).format(amount);
  } catch {
    return `${num(amount, 2)} ${code}`;
  }
}

export function time(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(locale(), { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC";
}

export function clockTime(date) {
  return date.toLocaleTimeString(locale(), { hour12: false });
}

/** A tag's typed value for display, with its unit from the catalogue. */
export function tagValue(name, value) {
  if (value === null || value === undefined) return "–";
  const info = tagInfo(name);
  const type = info?.type;
  if (type === "money") return money(value, info.unit);
  if (type === "time") return time(value);
  if (type === "ratio") return pct(value);
  if (name === "churn_risk") return pct(value);
  if (type === "int" || type === "float") {
    let unit = unitLabel(info.unit);
    if (unit && value === 1 && unit.endsWith("s") && unit === info.unit) unit = unit.slice(0, -1); // 1 day, 1 order
    return unit ? `${num(value)} ${unit}` : num(value);
  }
  if (name === "top_categories") return String(value).split(",").join(", ");
  return valueLabel(name, value);
}
