// The dashboard shell: navigation (#/page/argument), language, live refresh by polling.
//
// Every page module exports { id, nav, load(arg) -> data, render(root, data, arg) }. The shell
// calls load + render on arrival and again every few seconds; a page builds its layout once
// (layout()) and updates figures and charts in place, so refreshing does not flicker or lose
// what the user typed. After each successful render <body> carries data-page and data-ticks
// (the browser tests wait for them).

import * as api from "./api.js";
import { disposeAll } from "./charts.js";
import { h } from "./dom.js";
import { clockTime } from "./format.js";
import { setCatalogue, setLanguage, t, translate } from "./i18n.js";
import activity from "./pages/activity.js";
import audiences from "./pages/audiences.js";
import churn from "./pages/churn.js";
import funnel from "./pages/funnel.js";
import overview from "./pages/overview.js";
import profile from "./pages/profile.js";
import rfm from "./pages/rfm.js";
import rules from "./pages/rules.js";
import satisfaction from "./pages/satisfaction.js";
import segments from "./pages/segments.js";

const PAGES = [overview, rfm, funnel, activity, satisfaction, churn, segments, rules, audiences, profile];
const BY_ID = new Map(PAGES.map((p) => [p.id, p]));

const root = document.getElementById("page");
const nav = document.getElementById("nav");
const status = document.getElementById("status");
const notice = document.getElementById("notice");
const refresh = document.getElementById("refresh");
const langSelect = document.getElementById("lang");

let generation = 0; // bumps on navigation: a late answer for the previous page is dropped
let timer = null;
let ticks = 0;
let lastOk = null;

function route() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [id, ...rest] = hash.split("/");
  const page = BY_ID.get(id) || overview;
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  return { page, arg };
}

function drawNav(current) {
  nav.replaceChildren(
    ...PAGES.map((p) =>
      h("a", { href: `#/${p.id}`, class: p.id === current.id ? "active" : "", dataset: { nav: p.id } }, t(p.nav)),
    ),
  );
}

function showStatus(kind, text) {
  status.className = `status ${kind}`;
  status.textContent = text;
}

let waitingForToken = false; // no polling while the token form is up (it would only 401 again)

function askToken() {
  if (waitingForToken) return;
  waitingForToken = true;
  const input = h("input", { type: "password", dataset: { testid: "token" } });
  const save = async () => {
    api.setToken(input.value.trim());
    waitingForToken = false;
    notice.hidden = true;
    await loadCatalogue();
    navigate();
  };
  notice.replaceChildren(
    h("span", {}, t("token.prompt"), " "),
    input,
    " ",
    h("button", { class: "primary", on: { click: save } }, t("token.save")),
  );
  notice.hidden = false;
}

async function tick() {
  clearTimeout(timer);
  const mine = generation;
  const { page, arg } = route();
  try {
    const data = await page.load(arg);
    if (mine !== generation) return;
    page.render(root, data, arg);
    ticks += 1;
    lastOk = new Date();
    document.body.dataset.page = page.id;
    document.body.dataset.ticks = String(ticks);
    if (!waitingForToken) notice.hidden = true;
    const live = Number(refresh.value) > 0;
    showStatus(live ? "" : "stale", t(live ? "status.live" : "status.paused", { time: clockTime(lastOk) }));
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof api.ApiError && err.status === 401) {
      askToken();
    }
    showStatus("error", t("status.error", { error: err.message }));
    console.warn("dashboard refresh failed:", err.message);
  } finally {
    if (mine === generation) schedule();
  }
}

function schedule() {
  clearTimeout(timer);
  const every = Number(refresh.value);
  if (every > 0 && !waitingForToken) timer = setTimeout(tick, every);
}

function navigate() {
  generation += 1;
  disposeAll();
  root.replaceChildren();
  delete root.dataset.layout;
  const { page } = route();
  drawNav(page);
  document.getElementById("page-title").textContent = t(page.nav);
  document.title = `Portrait · ${t(page.nav)}`;
  showStatus("stale", t("status.loading"));
  tick();
}

async function loadCatalogue() {
  try {
    setCatalogue(await api.get("/v1/tags"));
  } catch (err) {
    console.warn("no tag catalogue yet, tags show their names:", err.message);
  }
}

async function start() {
  const params = new URLSearchParams(window.location.search);
  setLanguage(params.get("lang") || localStorage.getItem("portrait.lang") || "en");
  langSelect.value = document.documentElement.lang.startsWith("zh") ? "zh" : "en";
  refresh.value = localStorage.getItem("portrait.refresh") || refresh.value;
  translate(document);
  await loadCatalogue();
  langSelect.addEventListener("change", () => {
    setLanguage(langSelect.value);
    localStorage.setItem("portrait.lang", langSelect.value);
    translate(document);
    navigate();
  });
  refresh.addEventListener("change", () => {
    localStorage.setItem("portrait.refresh", refresh.value);
    tick();
  });
  window.addEventListener("hashchange", navigate);
  navigate();
}

start();
