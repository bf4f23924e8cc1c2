// The read API as the dashboard calls it: same origin, JSON, problem details on errors.
// With PORTRAIT_API_TOKEN set the API wants a bearer token; the dashboard asks for it once and
// keeps it for the browser session.

const TOKEN_KEY = "portrait.token";

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
  }
}

function base() {
  // the page is served at the API's root (or under a proxy prefix): resolve relative to it
  return new URL(".", window.location.href);
}

export function url(path, params) {
  const target = new URL(path.replace(/^\//, ""), base());
  for (const [key, value] of Object.entries(params || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") target.searchParams.append(key, String(item));
    }
  }
  return target;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const out = { Accept: "application/json", ...(extra || {}) };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function problem(resp) {
  let title = resp.statusText || `HTTP ${resp.status}`;
  let detail = null;
  try {
    const body = await resp.json();
    title = body.title || title;
    detail = body.detail || null;
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(resp.status, title, detail);
}

export async function get(path, params) {
  const resp = await fetch(url(path, params), { headers: headers() });
  if (!resp.ok) throw await problem(resp);
  return resp.json();
}

export async function post(path, body) {
  const resp = await fetch(url(path), {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!resp.ok) throw await problem(resp);
  return resp.json();
}

/** Download ``path`` (a CSV export) as a file named ``filename``: a plain link without a token,
 * a fetched blob with one (a link cannot carry the Authorization header). */
export async function download(path, params, filename) {
  const target = url(path, params);
  const link = document.createElement("a");
  link.download = filename;
  if (token()) {
    const resp = await fetch(target, { headers: headers({ Accept: "text/csv" }) });
    if (!resp.ok) throw await problem(resp);
    link.href = URL.createObjectURL(await resp.blob());
  } else {
    link.href = target.toString();
  }
  document.body.appendChild(link);
  link.click();
  link.remove();
}
