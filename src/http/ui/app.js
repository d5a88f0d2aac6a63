// opslet web console: a small single-page app over the HTTP API, with no dependencies.
// Everything shown is built with textContent (never innerHTML), so applet text cannot inject
// markup. State-changing requests carry the session's CSRF token.
"use strict";

const state = { me: null, csrf: "" };

// ---- helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $main = () => document.getElementById("main");

function show(...nodes) {
  const m = $main();
  // Like `h`, nothing for a missing part (replaceChildren would write "null").
  m.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  m.focus({ preventScroll: true });
}

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = bad ? "bad on" : "on";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 4000);
}

// Every error answer is {"error": {"code", "message", "fields"?}}; a body that is not JSON
// arrives here as {error: text}.
class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super((err && (err.message || (typeof err === "string" && err))) || `HTTP ${status}`);
    this.status = status;
    this.code = (err && err.code) || "";
    this.fields = (err && err.fields) || [];
  }
}

/// A page of a list: the items and the cursor of the next page (`X-Opslet-Next`), if any.
async function apiPage(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  if (resp.status === 401) {
    state.me = null;
    location.hash = "#/login";
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { items: data, next: resp.headers.get("x-opslet-next") };
}

/// "Older" after a page that has more: the same view, from the cursor on.
function olderLink(route, params, next) {
  if (!next) return null;
  const p = new URLSearchParams(params);
  p.set("before", next);
  return h("p", {}, h("a", { href: `${route}?${p}`, id: "older" }, "Older →"));
}

async function api(method, path, body, raw) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  let payload;
  if (raw !== undefined) {
    payload = raw;
    headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  const text = await resp.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { error: text };
  }
  if (resp.status === 401 && !path.startsWith("/api/v1/session")) {
    state.me = null;
    location.hash = "#/login";
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const can = {
  run: () => ["operator", "admin"].includes(state.me?.role),
  publish: () => ["publisher", "admin"].includes(state.me?.role),
  audit: () => ["auditor", "admin"].includes(state.me?.role),
  allJobs: () => ["auditor", "admin"].includes(state.me?.role),
  admin: () => state.me?.role === "admin",
};

function fmtTime(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

function duration(job) {
  if (!job.started_at) return "";
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  const ms = end - new Date(job.started_at);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/// A table of records: its header, then one `tr` per row (`rows` are built by the caller).
function grid(id, headers, rows) {
  return h("table", { class: "grid", id }, h("thead", {}, h("tr", {}, headers.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows));
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || ""}` }, text);
}

function statusBadge(s) {
  const kind = { ok: "good", running: "info", queued: "info", cancelled: "warn", awaiting_approval: "warn" }[s] || "bad";
  return badge(s, kind);
}

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e));
}

// ---- navigation --------------------------------------------------------------------------------

function renderNav() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!state.me) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  const links = [["#/", "Market"], ["#/jobs", "Jobs"], ["#/approvals", "Approvals"], ["#/schedules", "Schedules"], ["#/hosts", "Hosts"], ["#/artifacts", "Artifacts"]];
  if (can.publish()) links.push(["#/publish", "Publish"]);
  if (can.audit()) links.push(["#/audit", "Audit"]);
  if (can.admin()) links.push(["#/admin", "Admin"]);
  nav.replaceChildren(...links.map(([href, label]) => h("a", { href, "data-nav": label.toLowerCase() }, label)));
  who.replaceChildren(
    h("span", {}, `${state.me.user} · ${state.me.role}`),
    h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
  );
}

async function signOut() {
  try {
    await api("DELETE", "/api/v1/session");
  } catch (_) {}
  state.me = null;
  state.csrf = "";
  location.hash = "#/login";
}

async function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (!state.me && parts[0] !== "login") {
    try {
      const me = await api("GET", "/api/v1/session");
      state.me = me;
      state.csrf = me.csrf;
    } catch (_) {
      location.hash = "#/login";
      return;
    }
  }
  renderNav();
  document.querySelectorAll("#nav a").forEach((a) => a.removeAttribute("aria-current"));
  const current = document.querySelector(`#nav a[href="#/${parts[0] || ""}"]`);
  if (current) current.setAttribute("aria-current", "page");
  // `await`, so an error of an async view lands in the catch below (and on the page).
  try {
    switch (parts[0]) {
      case "login":
        return await viewLogin();
      case undefined:
        return await viewMarket(params);
      case "applet":
        return await viewApplet(parts[1], params);
      case "job":
        return await viewJob(parts[1]);
      case "jobs":
        return await viewJobs(params);
      case "approvals":
        return await viewApprovals();
      case "schedules":
        return await viewSchedules();
      case "hosts":
        return await viewHosts(params);
      case "artifacts":
        return await viewArtifacts(params);
      case "audit":
        return await viewAudit(params);
      case "publish":
        return await viewPublish();
      case "admin":
        return await viewAdmin(parts[1] || "users");
      default:
        show(h("h1", {}, "Not found"), h("p", {}, `Nothing at ${hash}.`));
    }
  } catch (e) {
    if (e.status !== 401) show(errorBox(e));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

// ---- sign in -------------------------------------------------------------------------------------

function viewLogin() {
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const user = h("input", { id: "login-user", name: "user", autocomplete: "username", required: true });
  const pass = h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password" });
  const token = h("input", { id: "login-token", name: "token", type: "password", autocomplete: "off", placeholder: "opslet_…" });
  const form = h(
    "form",
    {
      class: "card narrow",
      onsubmit: async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        const body = token.value.trim() ? { token: token.value.trim() } : { user: user.value.trim(), password: pass.value };
        try {
          const me = await api("POST", "/api/v1/session", body);
          state.me = me;
          state.csrf = me.csrf;
          location.hash = "#/";
        } catch (e) {
          err.textContent = e.message;
          err.hidden = false;
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("label", { for: "login-user" }, "User"),
    user,
    h("label", { for: "login-password" }, "Password"),
    pass,
    h("details", {}, h("summary", {}, "Sign in with an API token instead"), h("label", { for: "login-token" }, "Token"), token),
    err,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  renderNav();
  show(form);
  user.focus();
}

// ---- market --------------------------------------------------------------------------------------

function permissionBadges(perms) {
  return perms.map((p) => badge(p, "perm"));
}

/// Whether a version has tests of its own and how they went when it was published.
function testsBadge(tests) {
  if (!tests) return badge("no tests", "");
  return tests.failed ? badge(`tests: ${tests.failed} failed`, "bad") : badge(`tests: ${tests.passed} passed`, "good");
}

function hitCard(hit) {
  return h(
    "li",
    { class: "card hit" },
    h("a", { href: `#/applet/${encodeURIComponent(hit.name)}`, class: "title" }, hit.name),
    " ",
    h("span", { class: "muted" }, hit.version),
    hit.yanked ? badge("yanked", "bad") : null,
    testsBadge(hit.tests),
    h("p", {}, hit.description),
    h("div", { class: "badges" }, permissionBadges(hit.permissions), hit.tags.map((t) => badge(`#${t}`, "tag"))),
  );
}

async function viewMarket(params) {
  const q = params.get("q") || "";
  const tag = params.get("tag") || "";
  const input = h("input", { id: "search", type: "search", value: q, placeholder: "Search applets (typos are fine)", "aria-label": "Search applets" });
  const results = h("div", { id: "results" });
  const tags = h("div", { class: "tags", "aria-label": "Tags" });
  const form = h(
    "form",
    {
      role: "search",
      onsubmit: (ev) => {
        ev.preventDefault();
        const p = new URLSearchParams();
        if (input.value.trim()) p.set("q", input.value.trim());
        if (tag) p.set("tag", tag);
        location.hash = `#/?${p}`;
      },
    },
    input,
    h("button", { type: "submit" }, "Search"),
  );
  show(h("h1", {}, "Applet market"), form, tags, results);
  const qs = new URLSearchParams({ q, limit: "200" });
  if (tag) qs.set("tag", tag);
  const hits = await api("GET", `/api/v1/search?${qs}`);
  const allTags = [...new Set(hits.flatMap((x) => x.tags))].sort();
  tags.replaceChildren(
    h("span", { class: "muted" }, "Tags: "),
    ...(tag ? [h("a", { href: `#/?${new URLSearchParams(q ? { q } : {})}` }, "all")] : []),
    ...allTags.map((t) => h("a", { href: `#/?${new URLSearchParams(q ? { q, tag: t } : { tag: t })}`, class: t === tag ? "on" : "" }, `#${t}`)),
  );
  const sections = [];
  if (!q && !tag) {
    const collections = {};
    for (const x of hits) for (const c of x.featured) (collections[c] ||= []).push(x);
    for (const [c, xs] of Object.entries(collections).sort()) {
      sections.push(h("section", { class: "featured" }, h("h2", {}, `Featured: ${c}`), h("ul", { class: "hits" }, xs.map(hitCard))));
    }
  }
  sections.push(
    h(
      "section",
      {},
      h("h2", {}, q || tag ? `${hits.length} result(s)` : "All applets"),
      hits.length ? h("ul", { class: "hits" }, hits.map(hitCard)) : h("p", { class: "muted" }, "No applet matches."),
    ),
  );
  results.replaceChildren(...sections);
}

// ---- applet page and run form -------------------------------------------------------------------

function scopeText(module, scope) {
  if (scope === true) return module;
  if (Array.isArray(scope)) return `${module}: ${scope.join(", ")}`;
  if (scope && typeof scope === "object") {
    const parts = Object.entries(scope).map(([k, v]) => `${k} = ${Array.isArray(v) ? v.join(", ") : v}`);
    return `${module}: ${parts.join("; ")}`;
  }
  return module;
}

async function viewApplet(name, params) {
  const [info, versions] = await Promise.all([
    api("GET", `/api/v1/applets/${encodeURIComponent(name)}`),
    api("GET", `/api/v1/applets/${encodeURIComponent(name)}/versions`),
  ]);
  const v = info.version;
  const head = h(
    "section",
    { class: "card" },
    h("h1", {}, v.name, " ", h("span", { class: "muted" }, v.version), v.yanked ? badge("yanked", "bad") : null, h("span", { id: "tests-badge" }, testsBadge(v.tests))),
    h("p", {}, v.description || h("span", { class: "muted" }, "No description.")),
    h(
      "div",
      { class: "badges", "aria-label": "Permissions" },
      Object.entries(v.permissions).length
        ? Object.entries(v.permissions).map(([m, s]) => badge(scopeText(m, s), "perm"))
        : badge("no host modules", "good"),
      v.tags.map((t) => badge(`#${t}`, "tag")),
    ),
    h("p", { class: "muted" }, `Published by ${v.publisher} on ${fmtTime(v.published_at)}`, v.message ? ` — “${v.message}”` : ""),
    info.approval?.required
      ? h(
          "div",
          { id: "needs-approval", class: "notice" },
          badge("needs approval", "warn"),
          " Runs wait for approval before they run (a dry run is their plan): ",
          info.approval.rules.map((r) => `${r.why}: ${r.approvals} by ${r.approvers}, ${r.when}`).join("; "),
        )
      : null,
  );
  const vt = grid(null, ["Version", "Publisher", "Published", "Message", "State", ""], versions
    .slice()
    .reverse()
    .map((x) =>
      h(
        "tr",
        {},
        h("td", {}, x.version),
        h("td", {}, x.publisher),
        h("td", {}, fmtTime(x.published_at)),
        h("td", {}, x.message),
        h("td", {}, x.version === info.current ? badge("current", "good") : null, x.yanked ? badge("yanked", "bad") : null),
        h("td", {}, can.publish() ? versionActions(name, x, info.current) : null),
      ),
    ));
  // Rolling back needs a version that was current before.
  const actions = can.publish() && (info.history || []).length > 0
    ? h("p", {}, h("button", { type: "button", id: "rollback", onclick: () => registryAction(`/api/v1/applets/${encodeURIComponent(name)}/rollback`, name, "Rolled back") }, "Roll back to the previous version"))
    : null;
  // "Run again" from a job: its params, but never a secret's (they were not kept).
  let again = null;
  if (params?.get("again")) {
    try {
      again = (await api("GET", `/api/v1/jobs/${encodeURIComponent(params.get("again"))}`)).params || null;
    } catch (_) {
      again = null;
    }
  }
  const runPart = can.run()
    ? runForm(v, again)
    : h("p", { class: "muted", id: "no-run" }, `Your role (${state.me.role}) cannot run applets.`);
  show(head, h("section", { class: "card" }, h("h2", {}, "Run"), runPart), h("section", { class: "card" }, h("h2", {}, "Versions"), vt, actions));
}

function versionActions(name, x, current) {
  const base = `/api/v1/applets/${encodeURIComponent(name)}`;
  const q = (extra) => `?${new URLSearchParams({ version: x.version, ...extra })}`;
  return h(
    "span",
    { class: "row-actions" },
    x.version !== current && !x.yanked ? h("button", { type: "button", onclick: () => registryAction(`${base}/promote${q({})}`, name, `Promoted ${x.version}`) }, "Promote") : null,
    x.yanked
      ? h("button", { type: "button", onclick: () => registryAction(`${base}/yank${q({ undo: "true" })}`, name, `Un-yanked ${x.version}`) }, "Un-yank")
      : h("button", { type: "button", class: "danger", onclick: () => registryAction(`${base}/yank${q({})}`, name, `Yanked ${x.version}`) }, "Yank"),
  );
}

async function registryAction(path, name, done) {
  try {
    await api("POST", path);
    toast(done);
    viewApplet(name);
  } catch (e) {
    toast(e.message, true);
  }
}

function field(name, spec) {
  const id = `p-${name}`;
  const label = h("label", { for: id }, name, spec.required ? h("span", { class: "req", title: "required" }, " *") : null);
  const desc = spec.description ? h("small", { class: "muted", id: `${id}-desc` }, spec.description) : null;
  const err = h("small", { class: "field-error", id: `${id}-err`, role: "alert", hidden: true });
  const common = { id, name, "aria-describedby": `${id}-desc ${id}-err`, required: spec.required && spec.type !== "boolean" };
  let input;
  let preview = null;
  const def = spec.default;
  switch (spec.type) {
    case "boolean":
      input = h("input", { ...common, type: "checkbox", checked: def === true });
      break;
    case "enum":
      input = h(
        "select",
        common,
        spec.required && def === undefined ? h("option", { value: "" }, "— choose —") : null,
        !spec.required ? h("option", { value: "" }, "") : null,
        (spec.values || []).map((x) => h("option", { value: x, selected: def === x }, x)),
      );
      break;
    case "integer":
    case "number":
      input = h("input", { ...common, type: "number", step: spec.type === "integer" ? "1" : "any", min: spec.min, max: spec.max, value: def });
      break;
    case "list":
      input = h("input", { ...common, value: Array.isArray(def) ? def.join(", ") : def, placeholder: "comma, separated, values" });
      break;
    case "host-selector": {
      input = h("input", { ...common, value: def, placeholder: "group:web & tag:env=prod" });
      preview = h("div", { class: "preview muted", id: `${id}-preview`, "aria-live": "polite" });
      let timer;
      let asked = 0;
      const update = () => {
        clearTimeout(timer);
        timer = setTimeout(async () => {
          const sel = input.value.trim();
          const mine = ++asked;
          if (!sel) return preview.replaceChildren();
          try {
            const hosts = await api("GET", `/api/v1/cmdb/hosts?${new URLSearchParams({ selector: sel })}`);
            if (mine !== asked) return; // a newer selector was typed meanwhile
            preview.replaceChildren(
              hosts.length ? `${hosts.length} host(s): ` : "No host matches this selector.",
              ...hosts.slice(0, 20).map((x) => badge(x.name, "host")),
              hosts.length > 20 ? ` and ${hosts.length - 20} more` : "",
            );
          } catch (e) {
            if (mine === asked) preview.replaceChildren(e.message);
          }
        }, 250);
      };
      input.addEventListener("input", update);
      if (def) update();
      break;
    }
    default:
      input = spec.multiline && !spec.secret
        ? h("textarea", { ...common, rows: 8, spellcheck: "false" }, def ?? "")
        : h("input", { ...common, type: spec.secret ? "password" : "text", value: def, autocomplete: "off" });
  }
  // A field's error goes once its value changes.
  const clear = () => {
    err.hidden = true;
    input.removeAttribute("aria-invalid");
  };
  input.addEventListener("input", clear);
  input.addEventListener("change", clear);
  return { name, spec, input, err, node: h("div", { class: "field" }, label, input, desc, preview, err) };
}

function valueOf(f) {
  const { spec, input } = f;
  if (spec.type === "boolean") return input.checked;
  // Many-line text is sent as typed, newlines and indentation kept.
  if (spec.multiline) return input.value.trim() === "" ? undefined : input.value;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (spec.type === "integer" || spec.type === "number") return Number(raw);
  if (spec.type === "list") {
    const items = raw.split(",").map((x) => x.trim()).filter((x) => x !== "");
    return ["integer", "number"].includes(spec.items) ? items.map(Number) : spec.items === "boolean" ? items.map((x) => x === "true") : items;
  }
  return raw;
}

function runForm(v, again) {
  const fields = Object.entries(v.params).map(([n, s]) => field(n, s));
  for (const f of again ? fields : []) {
    const val = again[f.name];
    if (val === undefined || val === null || f.spec.secret) continue;
    if (f.spec.type === "boolean") f.input.checked = val === true;
    else f.input.value = Array.isArray(val) ? val.join(", ") : String(val);
  }
  const formErr = h("p", { class: "error", role: "alert", hidden: true });
  const submit = async (dry) => {
    formErr.hidden = true;
    for (const f of fields) {
      f.err.hidden = true;
      f.input.removeAttribute("aria-invalid");
    }
    const params = {};
    for (const f of fields) {
      const val = valueOf(f);
      if (val !== undefined) params[f.name] = val;
    }
    const qs = new URLSearchParams({ async: "true" });
    if (dry) qs.set("dry_run", "true");
    try {
      const r = await api("POST", `/api/v1/applets/${encodeURIComponent(v.name)}/run?${qs}`, params);
      location.hash = `#/job/${r.job_id}`;
    } catch (e) {
      const byField = {};
      for (const fe of e.fields || []) (byField[fe.param] ||= []).push(fe.message);
      let first = null;
      for (const f of fields) {
        if (byField[f.name]) {
          f.err.textContent = byField[f.name].join("; ");
          f.err.hidden = false;
          f.input.setAttribute("aria-invalid", "true");
          first ||= f.input;
          delete byField[f.name];
        }
      }
      const rest = Object.entries(byField).map(([k, m]) => `${k}: ${m.join("; ")}`);
      if (!first || rest.length) {
        formErr.textContent = rest.length ? `${e.message}: ${rest.join("; ")}` : e.message;
        formErr.hidden = false;
      }
      (first || formErr).focus?.();
    }
  };
  return h(
    "form",
    {
      id: "run-form",
      novalidate: true,
      onsubmit: (ev) => {
        ev.preventDefault();
        submit(false);
      },
    },
    fields.length ? fields.map((f) => f.node) : h("p", { class: "muted" }, "This applet takes no params."),
    formErr,
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "run" }, "Run"), h("button", { type: "button", id: "dry-run", onclick: () => submit(true) }, "Dry run")),
  );
}

// ---- one job: live log, progress, result ---------------------------------------------------------

/// Rows of a result table drawn at once.
const PAGE_ROWS = 200;

function resultView(result) {
  const isTable = Array.isArray(result) && result.length > 0 && result.every((r) => r && typeof r === "object" && !Array.isArray(r));
  if (!isTable) return h("pre", { class: "json", id: "result-json" }, JSON.stringify(result, null, 2));
  // Identity columns first (objects come back with sorted keys), the rest as they appear.
  const seen = [...new Set(result.flatMap((r) => Object.keys(r)))];
  const lead = ["host", "name", "id"].filter((c) => seen.includes(c));
  const cols = [...lead, ...seen.filter((c) => !lead.includes(c))];
  const cell = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
  let sortCol = null;
  let sortDir = 1;
  const filter = h("input", { type: "search", id: "result-filter", placeholder: "Filter rows", "aria-label": "Filter result rows" });
  const tbody = h("tbody");
  const count = h("span", { class: "muted", id: "result-count" });
  const header = cols.map((c) =>
    h(
      "th",
      { scope: "col" },
      h(
        "button",
        {
          type: "button",
          class: "sort",
          onclick: () => {
            sortDir = sortCol === c ? -sortDir : 1;
            sortCol = c;
            header.forEach((th) => th.removeAttribute("aria-sort"));
            header[cols.indexOf(c)].setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
            page = 0;
            draw();
          },
        },
        c,
      ),
    ),
  );
  const rows = () => {
    const f = filter.value.trim().toLowerCase();
    let rs = result.filter((r) => !f || cols.some((c) => cell(r[c]).toLowerCase().includes(f)));
    if (sortCol) {
      rs = rs.slice().sort((a, b) => {
        const x = a[sortCol];
        const y = b[sortCol];
        if (typeof x === "number" && typeof y === "number") return (x - y) * sortDir;
        return cell(x).localeCompare(cell(y), undefined, { numeric: true }) * sortDir;
      });
    }
    return rs;
  };
  // A page of rows at a time: a run on thousands of hosts builds a few hundred rows, not
  // thousands, so the page stays responsive; filter, sort and downloads take every row.
  let page = 0;
  const prev = h("button", { type: "button", id: "rows-prev", onclick: () => ((page -= 1), draw()) }, "← Previous");
  const next = h("button", { type: "button", id: "rows-next", onclick: () => ((page += 1), draw()) }, "Next →");
  const span = h("span", { class: "muted", id: "rows-shown" });
  const pager = h("div", { class: "toolbar", id: "result-pager" }, prev, span, next);
  const draw = () => {
    const rs = rows();
    const pages = Math.max(1, Math.ceil(rs.length / PAGE_ROWS));
    page = Math.min(Math.max(page, 0), pages - 1);
    const shown = rs.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS);
    tbody.replaceChildren(...shown.map((r) => h("tr", {}, cols.map((c) => h("td", {}, cell(r[c]))))));
    count.textContent = `${rs.length} of ${result.length} row(s)`;
    pager.hidden = pages === 1;
    prev.disabled = page === 0;
    next.disabled = page === pages - 1;
    span.textContent = rs.length ? `rows ${page * PAGE_ROWS + 1}–${page * PAGE_ROWS + shown.length} of ${rs.length}` : "";
  };
  filter.addEventListener("input", () => ((page = 0), draw()));
  const download = (name, type, text) => {
    const a = h("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
    document.body.append(a);
    a.click();
    a.remove();
  };
  const csv = () => {
    // Cells a spreadsheet would run as a formula get a leading apostrophe.
    const neutral = (s) => (/^[=+\-@\t\r]/.test(s) ? `'${s}` : s);
    const q = (raw) => {
      const s = neutral(raw);
      return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
    };
    return [cols.map(q).join(","), ...rows().map((r) => cols.map((c) => q(cell(r[c]))).join(","))].join("\r\n") + "\r\n";
  };
  draw();
  return h(
    "div",
    { id: "result-table" },
    h(
      "div",
      { class: "toolbar" },
      filter,
      count,
      h("button", { type: "button", id: "download-csv", onclick: () => download("result.csv", "text/csv", csv()) }, "Download CSV"),
      h("button", { type: "button", id: "download-json", onclick: () => download("result.json", "application/json", JSON.stringify(rows(), null, 2)) }, "Download JSON"),
    ),
    h("div", { class: "scroll" }, h("table", { class: "grid" }, h("thead", {}, h("tr", {}, header)), tbody)),
    pager,
  );
}

function jobSummary(job) {
  return h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Applet"),
    h("dd", {}, h("a", { href: `#/applet/${encodeURIComponent(job.reference.split("@")[0])}` }, job.applet || job.reference)),
    h("dt", {}, "Status"),
    h("dd", { id: "job-status" }, statusBadge(job.status), job.dry_run ? badge("dry run", "warn") : null),
    h("dt", {}, "Started by"),
    h("dd", {}, job.user),
    h("dt", {}, "Submitted"),
    h("dd", {}, fmtTime(job.submitted_at)),
    h("dt", {}, "Duration"),
    h("dd", { id: "job-duration" }, duration(job)),
    h("dt", {}, "Params"),
    h("dd", {}, h("code", {}, JSON.stringify(job.params))),
    job.worker_tag ? [h("dt", {}, "Worker tag"), h("dd", {}, job.worker_tag)] : null,
    job.waiting ? [h("dt", {}, "Waiting"), h("dd", { class: "error", id: "job-waiting" }, job.waiting)] : null,
    job.schedule ? [h("dt", {}, "Schedule"), h("dd", { id: "job-schedule" }, h("a", { href: "#/schedules" }, job.schedule), job.note ? ` — ${job.note}` : "")] : null,
  );
}

async function viewJob(id) {
  const job = await api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`);
  const log = h("ol", { class: "log", id: "job-log", "aria-live": "polite" });
  const progress = h("div", { class: "progress", id: "job-progress", hidden: true });
  const result = h("section", { class: "card", id: "job-result" }, h("h2", {}, "Result"), h("p", { class: "muted" }, "Waiting for the run to finish…"));
  const summary = h("div", {}, jobSummary(job));
  const cancel = h(
    "button",
    {
      type: "button",
      class: "danger",
      id: "cancel",
      hidden: job.finished_at || !(job.user === state.me.user || state.me.role === "admin"),
      onclick: async () => {
        try {
          await api("POST", `/api/v1/jobs/${encodeURIComponent(id)}/cancel`);
          toast("Cancelling…");
        } catch (e) {
          toast(e.message, true);
        }
      },
    },
    "Cancel",
  );
  const auditLink = can.audit() ? h("a", { href: `#/audit?run=${encodeURIComponent(id)}`, id: "audit-link" }, "Audit records of this run") : null;
  const name = job.reference.split("@")[0];
  const againLink = can.run()
    ? h("a", { href: `#/applet/${encodeURIComponent(name)}?${new URLSearchParams({ again: id })}`, id: "run-again" }, "Run again with these params")
    : null;
  const approval = h("section", { class: "card", id: "approval", hidden: !job.approval });
  const drawApproval = (j) => {
    if (!j.approval) return;
    approval.hidden = false;
    // A redraw (a status event) keeps what the approver has typed so far.
    const typed = document.getElementById("decision-message")?.value;
    approval.replaceChildren(...approvalView(j, async () => drawApproval(await api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`))).filter(Boolean));
    const box = document.getElementById("decision-message");
    if (box && typed) box.value = typed;
  };
  drawApproval(job);
  show(
    h("h1", {}, "Job ", h("code", {}, id)),
    h("section", { class: "card" }, summary, h("p", {}, cancel, " ", againLink, " ", auditLink)),
    approval,
    progress,
    h("section", { class: "card" }, h("h2", {}, "Log"), log),
    result,
  );
  // Progress comes once per host: the bar is drawn at most once a frame, with the latest.
  let latest = null;
  const drawProgress = () => {
    const p = latest;
    latest = null;
    const done = p.ok + p.failed + p.skipped;
    progress.hidden = false;
    progress.replaceChildren(
      h("span", {}, `${p.call}: ${done}/${p.total} hosts`),
      h("progress", { max: p.total, value: done }),
      h("span", {}, `ok ${p.ok} · failed ${p.failed} · skipped ${p.skipped} · pending ${p.pending}`),
    );
  };
  const addLine = (l) => {
    if (l.progress) {
      if (!latest) requestAnimationFrame(drawProgress);
      latest = l.progress;
      return;
    }
    log.append(h("li", { class: `lvl-${l.level}` }, h("time", {}, new Date(l.time).toLocaleTimeString()), " ", h("b", {}, l.level), " ", l.message));
  };
  const finish = (j) => {
    // The duration stops counting (see `ticking`).
    job.finished_at = j.finished_at || new Date().toISOString();
    job.started_at = j.started_at || job.started_at;
    summary.replaceChildren(jobSummary(j));
    drawApproval(j);
    cancel.hidden = true;
    if (j.error) result.replaceChildren(h("h2", {}, "Result"), errorBox(j.error));
    else result.replaceChildren(h("h2", {}, "Result"), resultView(j.result));
  };
  if (job.finished_at) {
    job.logs.forEach(addLine);
    finish(job);
    return;
  }
  const es = new EventSource(`/api/v1/jobs/${encodeURIComponent(id)}/events`);
  es.addEventListener("log", (ev) => addLine(JSON.parse(ev.data).line));
  es.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data).status;
    // replaceChildren would write a null as the text "null".
    document.getElementById("job-status")?.replaceChildren(...[statusBadge(s), job.dry_run ? badge("dry run", "warn") : null].filter(Boolean));
    if (s === "running" && !job.started_at) job.started_at = new Date().toISOString();
    // An approval request changed (its plan, a decision): show it as it is now.
    if (job.approval) api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`).then(drawApproval).catch(() => {});
  });
  // The duration counts while the job runs.
  const ticking = setInterval(() => {
    const d = document.getElementById("job-duration");
    if (!d || job.finished_at) return clearInterval(ticking);
    d.textContent = duration(job);
  }, 1000);
  es.addEventListener("end", (ev) => {
    es.close();
    clearInterval(ticking);
    finish(JSON.parse(ev.data).job);
  });
  es.onerror = () => {
    es.close();
    api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`).then((j) => j.finished_at && finish(j)).catch(() => {});
  };
  window.addEventListener(
    "hashchange",
    () => {
      es.close();
      clearInterval(ticking);
    },
    { once: true },
  );
}

// ---- approvals -------------------------------------------------------------------------------------

/// What a plan step would change: for a `before`/`after` pair (a cmdb record), only the fields
/// that differ, as "field: before → after"; else the detail itself.
function planDetail(detail) {
  const d = { ...(detail || {}) };
  delete d.planned;
  if (d.before && d.after && typeof d.before === "object" && typeof d.after === "object") {
    const keys = [...new Set([...Object.keys(d.before), ...Object.keys(d.after)])];
    const changed = keys.filter((k) => JSON.stringify(d.before[k]) !== JSON.stringify(d.after[k]));
    return changed.map((k) => `${k}: ${JSON.stringify(d.before[k] ?? null)} → ${JSON.stringify(d.after[k] ?? null)}`).join("\n") || "no change";
  }
  return JSON.stringify(d);
}

/// One step of a plan as a table row: module.action, target, what it would do.
function planRow(step) {
  return h(
    "tr",
    {},
    h("td", {}, h("code", {}, `${step.module}.${step.action}`)),
    h("td", {}, step.target),
    h("td", {}, step.ok === false ? badge("would fail", "bad") : null, h("code", { class: "detail" }, planDetail(step.detail))),
  );
}

/// A job's approval request: why it waits, its plan, the decisions, and (for an approver)
/// Approve / Reject with a message. `redraw` shows the job again after a decision.
function approvalView(job, redraw) {
  const a = job.approval;
  const waiting = job.status === "awaiting_approval";
  const approved = a.decisions.filter((d) => d.approve).length;
  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Why"),
    h("dd", { id: "approval-why" }, a.rules.map((r) => h("div", {}, `${r.module} ${r.actions.join("/") || "(any use)"}${r.env.length ? ` to env ${r.env.join("/")}` : ""} — rule ${r.name}`))),
    h("dt", {}, "Approvals"),
    h("dd", { id: "approval-count" }, `${approved} of ${a.needed}`),
    h("dt", {}, "Who may approve"),
    h("dd", {}, [...new Set(a.rules.map((r) => approversText(r)))].join("; and "), ` (not ${job.user}, who asked)`),
    h("dt", {}, waiting ? "Expires" : "Asked"),
    h("dd", {}, fmtTime(waiting ? a.expires_at : a.requested_at)),
  );
  const decisions = a.decisions.length
    ? h("ul", { id: "approval-decisions" }, a.decisions.map((d) => h("li", {}, badge(d.approve ? "approved" : "rejected", d.approve ? "good" : "bad"), ` ${d.user}, ${fmtTime(d.at)}`, d.message ? ` — “${d.message}”` : "")))
    : null;
  let plan;
  if (a.planning) plan = h("p", { class: "muted", id: "approval-plan" }, "Making its plan (a dry run)…");
  else if (a.plan_error) plan = h("p", { class: "error", id: "approval-plan" }, `No plan: ${a.plan_error}. It needs approval all the same.`);
  else if (!a.plan.length) plan = h("p", { class: "muted", id: "approval-plan" }, "Its dry run planned no module calls.");
  else plan = h("div", { id: "approval-plan" }, grid("plan", ["Call", "Target", "What it would do"], a.plan.map(planRow)));
  const out = [h("h2", {}, waiting ? "Waiting for approval" : "Approval"), facts, h("h3", {}, `Plan (${a.plan.length} step${a.plan.length === 1 ? "" : "s"})`), plan, decisions];
  if (waiting && job.user !== state.me.user && !a.planning) {
    const msg = h("textarea", { id: "decision-message", rows: 2, placeholder: "Why (required to reject)", "aria-label": "Message" });
    const err = h("p", { class: "error", role: "alert", id: "decision-error", hidden: true });
    const decide = async (verb) => {
      err.hidden = true;
      try {
        await api("POST", `/api/v1/jobs/${encodeURIComponent(job.id)}/${verb}`, { message: msg.value });
        toast(verb === "approve" ? "Approved" : "Rejected");
        await redraw();
      } catch (e) {
        err.textContent = e.message;
        err.hidden = false;
      }
    };
    out.push(
      h("label", { for: "decision-message" }, "Message"),
      msg,
      err,
      h("div", { class: "buttons" }, h("button", { type: "button", class: "primary", id: "approve", onclick: () => decide("approve") }, "Approve"), h("button", { type: "button", class: "danger", id: "reject", onclick: () => decide("reject") }, "Reject")),
    );
  } else if (waiting && job.user === state.me.user) {
    out.push(h("p", { class: "muted", id: "self-note" }, "You asked for this run: someone else must approve it."));
  }
  return out;
}

function approversText(rule) {
  const parts = [...rule.roles.map((r) => `role ${r}`), ...rule.groups.map((g) => `group ${g}`), ...rule.users.map((u) => `user ${u}`)];
  return parts.length ? parts.join(" or ") : "role admin";
}

async function viewApprovals() {
  const { approvals } = await api("GET", "/api/v1/approvals");
  const rows = approvals.map(({ job, may_decide, why_not }) =>
    h(
      "tr",
      { "data-job": job.id },
      h("td", {}, h("a", { href: `#/job/${job.id}` }, job.id.slice(0, 13))),
      h("td", {}, job.applet),
      h("td", {}, job.user),
      h("td", {}, job.approval.rules.map((r) => r.name).join(", ")),
      h("td", {}, `${job.approval.decisions.filter((d) => d.approve).length} of ${job.approval.needed}`),
      h("td", {}, job.approval.planning ? "being made" : job.approval.plan_error ? badge("none", "bad") : `${job.approval.plan.length} steps`),
      h("td", {}, fmtTime(job.approval.expires_at)),
      h("td", {}, may_decide ? h("a", { href: `#/job/${job.id}`, class: "button" }, "Review") : h("span", { class: "muted" }, why_not)),
    ),
  );
  show(
    h("h1", {}, "Approvals"),
    h("p", { class: "muted" }, "Risky runs wait here for approval, with their plan (what their dry run would do)."),
    approvals.length
      ? grid("approvals", ["Job", "Applet", "Asked by", "Rules", "Approvals", "Plan", "Expires", ""], rows)
      : h("p", { id: "no-approvals" }, "No run waits for approval."),
  );
}

// ---- jobs, hosts, audit, publish -----------------------------------------------------------------

function filterForm(fields, params, target) {
  const inputs = fields.map(([name, label, opts]) =>
    opts
      ? h("select", { name, "aria-label": label }, h("option", { value: "" }, `${label}: any`), opts.map((o) => h("option", { value: o, selected: params.get(name) === o }, o)))
      : h("input", { name, placeholder: label, "aria-label": label, value: params.get(name) || "" }),
  );
  return h(
    "form",
    {
      class: "filters",
      onsubmit: (ev) => {
        ev.preventDefault();
        const p = new URLSearchParams();
        for (const i of inputs) if (i.value.trim()) p.set(i.name, i.value.trim());
        location.hash = `${target}?${p}`;
      },
    },
    inputs,
    h("button", { type: "submit" }, "Filter"),
  );
}

async function viewJobs(params) {
  const qs = new URLSearchParams({ limit: "50" });
  for (const k of ["applet", "status", "user", "before"]) if (params.get(k)) qs.set(k, params.get(k));
  const [{ items: jobs, next }, { workers }] = await Promise.all([apiPage(`/api/v1/jobs?${qs}`), api("GET", "/api/v1/workers")]);
  const fields = [["applet", "Applet"], ["status", "Status", ["awaiting_approval", "queued", "running", "ok", "error", "invalid_params", "limit_exceeded", "cancelled", "rejected", "expired"]]];
  if (can.allJobs()) fields.push(["user", "User"]);
  show(
    h("h1", {}, "Jobs"),
    filterForm(fields, params, "#/jobs"),
    jobs.length
      ? grid("jobs", ["Job", "Applet", "Status", "User", "Submitted", "Duration"], jobs.map((j) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/job/${j.id}` }, j.id.slice(0, 13))),
          h("td", {}, j.applet || j.reference),
          h("td", {}, statusBadge(j.status), j.dry_run ? badge("dry run", "warn") : null),
          h("td", {}, j.user),
          h("td", {}, fmtTime(j.submitted_at)),
          h("td", {}, duration(j)),
        ),
      ))
      : h("p", { class: "muted" }, "No jobs."),
    olderLink("#/jobs", params, next),
    // With `serve --queue nats://…`, the workers that run the jobs.
    workers
      ? h(
          "section",
          { class: "card", id: "workers" },
          h("h2", {}, `Workers (${workers.length})`),
          workers.length
            ? grid(null, ["Worker", "Tags", "Runs in flight", "Host", "Last heard"], workers.map((w) => h("tr", {}, h("td", {}, w.id), h("td", {}, w.tags.join(", ")), h("td", {}, String(w.in_flight)), h("td", {}, w.host), h("td", {}, `${w.seen_ago_s.toFixed(1)} s ago`))))
            : h("p", { class: "error" }, "No worker is connected: queued runs wait."),
        )
      : null,
  );
}

async function viewHosts(params) {
  const sel = params.get("selector") || "";
  const hosts = await api("GET", `/api/v1/cmdb/hosts?${new URLSearchParams(sel ? { selector: sel } : {})}`);
  show(
    h("h1", {}, "Hosts"),
    filterForm([["selector", "Selector, e.g. group:web & tag:env=prod"]], params, "#/hosts"),
    h("p", { class: "muted" }, `${hosts.length} host(s)`),
    resultView(hosts.map((x) => ({ name: x.name, address: x.address, port: x.port, groups: x.groups.join(", "), tags: Object.entries(x.tags).map(([k, v]) => `${k}=${v}`).join(", "), pinned_key: x.pinned ? "yes" : "no" }))),
  );
}

// ---- artifacts ----------------------------------------------------------------------------------

async function viewArtifacts(params) {
  const { connections } = await api("GET", "/api/v1/artifacts");
  const head = [h("h1", {}, "Artifacts")];
  if (!connections.length) {
    return show(...head, h("p", { id: "no-artifacts" }, "No artifact store is configured ([s3.NAME] in opslet.toml)."));
  }
  const names = connections.map((c) => c.name);
  const conn = params.get("connection") || (connections.find((c) => c.default) || connections[0]).name;
  const form = filterForm([["connection", "Store", names], ["bucket", "Bucket"], ["prefix", "Prefix"], ["versions", "Versions", ["yes"]]], params, "#/artifacts");
  const bucket = params.get("bucket");
  if (!bucket) {
    return show(...head, form, h("p", { class: "muted" }, `Stores: ${connections.map((c) => `${c.name} (${c.endpoint})`).join(", ")}. Name a bucket to list it.`));
  }
  const qs = new URLSearchParams({ bucket, prefix: params.get("prefix") || "", versions: params.get("versions") === "yes" ? "true" : "false" });
  const l = await api("GET", `/api/v1/artifacts/${encodeURIComponent(conn)}?${qs}`);
  const rows = l.objects.map((o) =>
    h(
      "tr",
      {},
      h("td", {}, o.key),
      h("td", { class: "num" }, String(o.size)),
      h("td", {}, o.modified ? fmtTime(o.modified) : ""),
      h("td", { class: "mono" }, o.etag || ""),
      h("td", { class: "mono" }, o.version_id || ""),
      h("td", {}, o.delete_marker ? badge("deleted", "warn") : o.latest ? badge("latest", "good") : ""),
    ),
  );
  show(
    ...head,
    form,
    h("p", { class: "muted", id: "artifact-summary" }, `${l.connection}: ${l.bucket}/${l.prefix} · versioning ${l.versioning || "off"} · ${l.objects.length}${l.truncated ? "+" : ""} object(s)`),
    grid("artifacts", ["Key", "Bytes", "Modified", "ETag", "Version", ""], rows),
  );
}

async function viewAudit(params) {
  // Newest first, a page at a time.
  const qs = new URLSearchParams({ limit: "100", order: "newest" });
  for (const k of ["applet", "caller", "status", "kind", "run", "before"]) if (params.get(k)) qs.set(k, params.get(k));
  const [{ items: records, next }, verify] = await Promise.all([apiPage(`/api/v1/audit?${qs}`), api("GET", "/api/v1/audit/verify")]);
  const chain = verify.intact
    ? h("p", { class: "ok", id: "chain" }, `Chain intact: ${verify.records} records verified.`)
    : h("p", { class: "error", id: "chain" }, `Chain broken at record ${verify.first_bad?.seq ?? "?"}: ${verify.first_bad?.reason ?? ""}`);
  const detail = h("pre", { class: "json", id: "audit-detail", hidden: true });
  show(
    h("h1", {}, "Audit log"),
    chain,
    filterForm([["kind", "Kind"], ["caller", "Caller"], ["applet", "Applet"], ["status", "Status"], ["run", "Run id"]], params, "#/audit"),
    // A clicked record opens here, above the list, where it is seen.
    detail,
    grid("audit", ["#", "Time", "Kind", "Who", "Applet", "Status", "Target"], records.map((r) =>
      h(
        "tr",
        {},
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              class: "link",
              onclick: () => {
                detail.textContent = JSON.stringify(r, null, 2);
                detail.hidden = false;
                detail.scrollIntoView({ block: "start" });
              },
            },
            String(r.seq),
          ),
        ),
        h("td", {}, fmtTime(r.time)),
        h("td", {}, r.kind),
        h("td", {}, r.actor || ""),
        h("td", {}, r.applet || ""),
        h("td", {}, r.status || ""),
        h("td", {}, r.data?.target || r.data?.module || ""),
      ),
    )),
    olderLink("#/audit", params, next),
  );
}

function viewPublish() {
  const file = h("input", { type: "file", id: "bundle", accept: ".bundle,.json,application/json", required: true });
  const msg = h("input", { id: "publish-message", placeholder: "What changed" });
  const out = h("p", { role: "status" });
  show(
    h("h1", {}, "Publish"),
    h(
      "form",
      {
        class: "card narrow",
        onsubmit: async (ev) => {
          ev.preventDefault();
          if (!file.files[0]) return;
          try {
            const bytes = await file.files[0].arrayBuffer();
            const qs = msg.value.trim() ? `?${new URLSearchParams({ message: msg.value.trim() })}` : "";
            const r = await api("POST", `/api/v1/registry/publish${qs}`, undefined, bytes);
            const v = r.published || r.unchanged;
            out.className = "ok";
            out.replaceChildren(r.published ? "Published " : "Already published: ", h("a", { href: `#/applet/${encodeURIComponent(v.name)}` }, `${v.name}@${v.version}`));
          } catch (e) {
            out.className = "error";
            out.textContent = e.message;
          }
        },
      },
      h("p", { class: "muted" }, "Upload a bundle made with ", h("code", {}, "opslet export NAME -o FILE"), "."),
      h("label", { for: "bundle" }, "Bundle"),
      file,
      h("label", { for: "publish-message" }, "Message"),
      msg,
      h("button", { type: "submit", class: "primary" }, "Publish"),
      out,
    ),
  );
}

// ---- administration (admins; the API refuses everyone else) ----------------------------------------

const ADMIN_TABS = [["users", "Users"], ["tokens", "Tokens"], ["grants", "Grants"], ["hooks", "Webhooks"], ["secrets", "Secrets"]];
const ROLES = ["viewer", "operator", "publisher", "auditor", "admin"];

/// Makes a change, says so and shows the tab again (with what is now true); an error goes to
/// the caller (a form shows it beside its inputs).
async function changed(what, fn, tab) {
  await fn();
  await viewAdmin(tab);
  toast(what);
}

/// Like `changed`, for a button in a row: an error is said in the toast and the tab shown again,
/// so the row shows what is stored rather than what was tried.
async function change(what, fn, tab) {
  try {
    await changed(what, fn, tab);
  } catch (e) {
    await viewAdmin(tab).catch(() => {});
    toast(e.message, true);
  }
}

/// A small form: one row of inputs and a submit button; `submit(values)` gets the trimmed
/// values by name (a password is kept as typed).
function rowForm(id, inputs, label, submit) {
  const err = h("p", { class: "error", role: "alert", hidden: true });
  return h(
    "form",
    {
      class: "filters",
      id,
      onsubmit: async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        const v = {};
        for (const i of inputs) v[i.name] = i.type === "password" ? i.value : i.value.trim();
        try {
          await submit(v);
        } catch (e) {
          err.textContent = e.message;
          err.hidden = false;
        }
      },
    },
    inputs,
    h("button", { type: "submit", class: "primary" }, label),
    err,
  );
}

/// A secret shown once (a new token or hook secret), with a note that it will not be again.
function shownOnce(id, what, value) {
  return h(
    "div",
    { class: "card once", id, role: "status" },
    h("p", {}, h("b", {}, `${what}, shown only this once: `), "copy it now."),
    h("code", { class: "secret-value" }, value),
    " ",
    h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(value).then(() => toast("Copied")) }, "Copy"),
  );
}

function list(s) {
  return s.split(",").map((x) => x.trim()).filter(Boolean);
}

async function viewAdmin(tab, once) {
  const tabs = h(
    "nav",
    { class: "tabs", "aria-label": "Administration" },
    ADMIN_TABS.map(([t, label]) => h("a", { href: `#/admin/${t}`, "aria-current": t === tab ? "page" : null, id: `tab-${t}` }, label)),
  );
  const body = await ({ users: adminUsers, tokens: adminTokens, grants: adminGrants, hooks: adminHooks, secrets: adminSecrets }[tab] || (() => errorBox(`No admin page ${tab}.`)))(once);
  show(h("h1", {}, "Administration"), tabs, body);
}

async function adminUsers() {
  const users = await api("GET", "/api/v1/users");
  const roleSelect = (attrs, current) => h("select", attrs, ROLES.map((r) => h("option", { value: r, selected: r === current }, r)));
  const rows = users.map((u) => {
    const pw = h("input", { type: "password", name: "password", placeholder: "New password", autocomplete: "new-password", "aria-label": `New password for ${u.name}` });
    const groups = h("input", { name: "groups", value: u.groups.join(", "), "aria-label": `Groups of ${u.name}` });
    return h(
      "tr",
      { "data-user": u.name },
      h("td", {}, u.name),
      h(
        "td",
        {},
        roleSelect(
          {
            "aria-label": `Role of ${u.name}`,
            class: "role",
            onchange: (ev) => change(`${u.name} is now ${ev.target.value}`, () => api("PATCH", `/api/v1/users/${encodeURIComponent(u.name)}`, { role: ev.target.value }), "users"),
          },
          u.role,
        ),
      ),
      h(
        "td",
        {},
        h(
          "form",
          { class: "inline groups", onsubmit: (ev) => (ev.preventDefault(), change(`Groups of ${u.name} saved`, () => api("PATCH", `/api/v1/users/${encodeURIComponent(u.name)}`, { groups: list(groups.value) }), "users")) },
          groups,
          h("button", { type: "submit" }, "Save"),
        ),
      ),
      h(
        "td",
        {},
        u.password ? badge("set", "good") : badge("none"),
        h(
          "form",
          {
            class: "inline password",
            onsubmit: (ev) => {
              ev.preventDefault();
              change(`Password set for ${u.name}`, () => api("PUT", `/api/v1/users/${encodeURIComponent(u.name)}/password`, { password: pw.value }), "users");
            },
          },
          pw,
          h("button", { type: "submit" }, u.password ? "Change" : "Set"),
        ),
      ),
      h("td", {}, fmtTime(u.created_at)),
      h(
        "td",
        {},
        h(
          "button",
          {
            type: "button",
            class: "danger remove",
            onclick: () => confirm(`Remove ${u.name} and revoke their tokens?`) && change(`Removed ${u.name}`, () => api("DELETE", `/api/v1/users/${encodeURIComponent(u.name)}`), "users"),
          },
          "Remove",
        ),
      ),
    );
  });
  return h(
    "div",
    {},
    h("section", { class: "card" }, h("h2", {}, "Add a user"), rowForm(
      "add-user",
      [h("input", { name: "name", placeholder: "Name", "aria-label": "User name", required: true }), roleSelect({ name: "role", "aria-label": "Role" }, "viewer"), h("input", { name: "groups", placeholder: "Groups, comma-separated", "aria-label": "Groups" })],
      "Add",
      (v) => changed(`Added ${v.name}`, () => api("POST", "/api/v1/users", { name: v.name, role: v.role, groups: list(v.groups) }), "users"),
    ), h("p", { class: "muted" }, "A role or group change applies to the user's sessions and tokens at once.")),
    grid("users", ["User", "Role", "Groups", "Console password", "Created", ""], rows),
  );
}

async function adminTokens(once) {
  const [tokens, users] = await Promise.all([api("GET", "/api/v1/tokens"), api("GET", "/api/v1/users")]);
  return h(
    "div",
    {},
    once ? shownOnce("new-token", "The new token", once) : null,
    h("section", { class: "card" }, h("h2", {}, "Create a token"), rowForm(
      "add-token",
      [
        h("select", { name: "user", "aria-label": "User" }, users.map((u) => h("option", { value: u.name }, u.name))),
        h("input", { name: "label", placeholder: "What it is for", "aria-label": "Label" }),
        h("input", { name: "expires", placeholder: "Lifetime, e.g. 30d (empty: none)", "aria-label": "Lifetime" }),
      ],
      "Create",
      async (v) => {
        const body = { label: v.label };
        if (v.expires) body.expires = v.expires;
        const t = await api("POST", `/api/v1/users/${encodeURIComponent(v.user)}/tokens`, body);
        await viewAdmin("tokens", t.token);
        toast(`Token ${t.id} created for ${t.user}`);
      },
    )),
    grid("tokens", ["Id", "User", "Label", "Created", "Expires", "State", ""], tokens.map((t) =>
      h(
        "tr",
        { "data-token": t.id },
        h("td", {}, h("code", {}, t.id)),
        h("td", {}, t.user),
        h("td", {}, t.label),
        h("td", {}, fmtTime(t.created_at)),
        h("td", {}, t.expires_at ? fmtTime(t.expires_at) : "never"),
        h("td", {}, t.revoked ? badge("revoked", "bad") : t.expires_at && new Date(t.expires_at) < new Date() ? badge("expired", "warn") : badge("live", "good")),
        h("td", {}, t.revoked ? null : h("button", { type: "button", class: "danger revoke", onclick: () => confirm(`Revoke token ${t.id} of ${t.user}?`) && change(`Revoked ${t.id}`, () => api("DELETE", `/api/v1/tokens/${encodeURIComponent(t.id)}`), "tokens") }, "Revoke")),
      ),
    )),
  );
}

async function adminGrants() {
  const grants = await api("GET", "/api/v1/grants");
  return h(
    "div",
    {},
    h("section", { class: "card" }, h("h2", {}, "Grant a run right"), rowForm(
      "add-grant",
      [h("input", { name: "subject", placeholder: "User or group:NAME", "aria-label": "Subject", required: true }), h("input", { name: "pattern", placeholder: "Applets, e.g. disk-*", "aria-label": "Applet pattern", required: true })],
      "Grant",
      (v) => changed(`${v.subject} may run ${v.pattern}`, () => api("POST", "/api/v1/grants", v), "grants"),
    ), h("p", { class: "muted" }, "Operators run the applets their grants (to them or to one of their groups) allow.")),
    grid("grants", ["Subject", "Applets", ""], grants.map((g) =>
      h("tr", {}, h("td", {}, g.subject), h("td", {}, h("code", {}, g.pattern)), h("td", {}, h("button", { type: "button", class: "danger remove", onclick: () => change(`Grant removed`, () => api("DELETE", "/api/v1/grants", g), "grants") }, "Remove"))),
    )),
  );
}

async function adminHooks(once) {
  const hooks = await api("GET", "/api/v1/hooks");
  return h(
    "div",
    {},
    once ? shownOnce("new-hook-secret", "The hook's signing secret", once) : null,
    h("section", { class: "card" }, h("h2", {}, "Add a webhook"), rowForm(
      "add-hook",
      [
        h("input", { name: "name", placeholder: "Name", "aria-label": "Hook name", required: true }),
        h("input", { name: "applet", placeholder: "Applet (name or name@version)", "aria-label": "Applet", required: true }),
        h("input", { name: "map", placeholder: "param=$.path, …", "aria-label": "Param map" }),
      ],
      "Add",
      async (v) => {
        const hk = await api("POST", "/api/v1/hooks", { name: v.name, applet: v.applet, map: list(v.map) });
        await viewAdmin("hooks", hk.secret);
        toast(`Hook ${hk.name} added`);
      },
    ), h("p", { class: "muted" }, "Deliveries go to ", h("code", {}, "POST /hooks/NAME"), " signed with the hook's secret.")),
    grid("hooks", ["Name", "Applet", "Params from", "Created", ""], hooks.map((k) =>
      h(
        "tr",
        {},
        h("td", {}, k.name),
        h("td", {}, k.applet),
        h("td", {}, k.map.map(([p, path]) => `${p}=${path}`).join(", ")),
        h("td", {}, fmtTime(k.created_at)),
        h("td", {}, h("button", { type: "button", class: "danger remove", onclick: () => confirm(`Remove hook ${k.name}?`) && change(`Removed ${k.name}`, () => api("DELETE", `/api/v1/hooks/${encodeURIComponent(k.name)}`), "hooks") }, "Remove")),
      ),
    )),
  );
}

async function adminSecrets() {
  const secrets = await api("GET", "/api/v1/secrets");
  const setValue = (name, value) => api("PUT", `/api/v1/secrets/${encodeURIComponent(name)}`, { value });
  return h(
    "div",
    {},
    h("section", { class: "card" }, h("h2", {}, "Add a secret"), rowForm(
      "add-secret",
      [h("input", { name: "name", placeholder: "Name", "aria-label": "Secret name", required: true }), h("input", { name: "value", type: "password", placeholder: "Value", "aria-label": "Secret value", autocomplete: "off", required: true })],
      "Add",
      (v) => changed(`Secret ${v.name} set`, () => setValue(v.name, v.value), "secrets"),
    ), h("p", { class: "muted" }, "Values are encrypted at rest and never shown again, here or anywhere else.")),
    grid("secrets", ["Name", "Changed", "By", "New value", ""], secrets.map((x) => {
      const v = h("input", { type: "password", name: "value", autocomplete: "off", placeholder: "New value", "aria-label": `New value of ${x.name}` });
      return h(
        "tr",
        { "data-secret": x.name },
        h("td", {}, x.name),
        h("td", {}, fmtTime(x.updated_at)),
        h("td", {}, x.updated_by),
        h("td", {}, h("form", { class: "inline rotate", onsubmit: (ev) => (ev.preventDefault(), v.value && change(`Secret ${x.name} rotated`, () => setValue(x.name, v.value), "secrets")) }, v, h("button", { type: "submit" }, "Rotate"))),
        h("td", {}, h("button", { type: "button", class: "danger remove", onclick: () => confirm(`Remove secret ${x.name}? Applets that use it will fail.`) && change(`Removed ${x.name}`, () => api("DELETE", `/api/v1/secrets/${encodeURIComponent(x.name)}`), "secrets") }, "Remove")),
      );
    })),
  );
}

// ---- schedules -----------------------------------------------------------------------------------

/// A time in a zone as the browser can say it (the zone's offset), else as UTC.
function fmtIn(t, tz) {
  if (!t) return "";
  try {
    return new Date(t).toLocaleString(undefined, { timeZone: tz, timeZoneName: "short" });
  } catch (_) {
    return `${t} UTC`;
  }
}

/// Schedules: the caller's own (every one for an admin), with their next fire, buttons to pause,
/// resume, run now and remove, and a form to add one. The routes check the owner's grants.
async function viewSchedules(note) {
  const schedules = await api("GET", "/api/v1/schedules");
  const redraw = async (what, fn) => {
    try {
      await fn();
      await viewSchedules();
      toast(what);
    } catch (e) {
      await viewSchedules().catch(() => {});
      toast(e.message, true);
    }
  };
  const post = (s, action) => api("POST", `/api/v1/schedules/${encodeURIComponent(s.name)}/${action}`);
  const rows = schedules.map((s) =>
    h(
      "tr",
      { "data-schedule": s.name },
      h("td", {}, s.name, s.paused ? [" ", badge("paused", "warn")] : null),
      h("td", {}, h("a", { href: `#/applet/${encodeURIComponent(s.applet.split("@")[0])}` }, s.applet)),
      h("td", {}, h("code", {}, s.cron), h("div", { class: "muted" }, s.description || "")),
      h("td", {}, s.tz),
      h("td", {}, s.owner),
      h("td", {}, s.next_fire ? [fmtIn(s.next_fire, s.tz), h("div", { class: "muted" }, fmtTime(s.next_fire))] : "—"),
      h("td", {}, s.last_fire ? fmtTime(s.last_fire) : "", s.last_job ? h("div", {}, h("a", { href: `#/job/${s.last_job}` }, "last job")) : null),
      h(
        "td",
        {},
        s.missed,
        s.last_miss ? h("div", { class: "muted" }, `${s.last_miss.count} missed ${fmtTime(s.last_miss.noticed_at)}`) : null,
        s.last_refusal ? h("div", { class: "error" }, `refused: ${s.last_refusal.why}`) : null,
      ),
      h(
        "td",
        { class: "actions" },
        s.paused
          ? h("button", { type: "button", class: "resume", onclick: () => redraw(`Resumed ${s.name}`, () => post(s, "resume")) }, "Resume")
          : h("button", { type: "button", class: "pause", onclick: () => redraw(`Paused ${s.name}`, () => post(s, "pause")) }, "Pause"),
        " ",
        h("button", { type: "button", class: "run-now", onclick: () => redraw(`Started ${s.name}`, async () => { const r = await post(s, "run"); location.hash = `#/job/${r.job_id}`; }) }, "Run now"),
        " ",
        h("button", { type: "button", class: "danger remove", onclick: () => confirm(`Remove schedule ${s.name}?`) && redraw(`Removed ${s.name}`, () => api("DELETE", `/api/v1/schedules/${encodeURIComponent(s.name)}`)) }, "Remove"),
      ),
    ),
  );
  show(
    h("h1", {}, "Schedules"),
    note || null,
    can.run() ? scheduleForm() : null,
    schedules.length
      ? grid("schedules", ["Name", "Applet", "Cron", "Zone", "Owner", "Next fire (zone, then yours)", "Last fire", "Missed runs", ""], rows)
      : h("p", { class: "muted" }, "No schedules."),
  );
}

/// The add form: each field's error is shown beside it (the answer's `fields`), the rest below.
function scheduleForm() {
  const input = (name, attrs) => h("input", { name, id: `schedule-${name}`, ...attrs });
  const inputs = {
    name: input("name", { required: true, placeholder: "nightly-report" }),
    applet: input("applet", { required: true, placeholder: "name or name@version" }),
    cron: input("cron", { required: true, placeholder: "0 */6 * * *  (6 fields: seconds first)" }),
    tz: input("tz", { placeholder: "UTC", value: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" }),
    params: h("textarea", { name: "params", id: "schedule-params", rows: 2, placeholder: '{"threshold": 90}' }),
    owner: can.admin() ? input("owner", { placeholder: state.me.user }) : null,
    missed: h("select", { name: "missed", id: "schedule-missed" }, h("option", { value: "skip" }, "skip missed fires"), h("option", { value: "once" }, "run once to catch up")),
  };
  const errors = {};
  const labels = { name: "Name", applet: "Applet", cron: "Cron expression", tz: "Time zone", params: "Params (JSON)", owner: "Owner", missed: "Fires missed while the server was down" };
  const rows = Object.entries(inputs)
    .filter(([, el]) => el)
    .map(([k, el]) => {
      errors[k] = h("small", { class: "field-error", id: `schedule-${k}-error`, hidden: true });
      return h("div", { class: "field" }, h("label", { for: el.id }, labels[k]), el, errors[k]);
    });
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const clear = () => {
    err.hidden = true;
    for (const [k, e] of Object.entries(errors)) {
      e.hidden = true;
      inputs[k]?.removeAttribute("aria-invalid");
    }
  };
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Add a schedule"),
    h(
      "form",
      {
        id: "add-schedule",
        onsubmit: async (ev) => {
          ev.preventDefault();
          clear();
          const body = { name: inputs.name.value.trim(), applet: inputs.applet.value.trim(), cron: inputs.cron.value.trim(), missed: inputs.missed.value };
          if (inputs.tz.value.trim()) body.tz = inputs.tz.value.trim();
          if (inputs.owner && inputs.owner.value.trim()) body.owner = inputs.owner.value.trim();
          const text = inputs.params.value.trim();
          if (text) {
            try {
              body.params = JSON.parse(text);
            } catch (e) {
              errors.params.textContent = `not JSON: ${e.message}`;
              errors.params.hidden = false;
              return;
            }
          }
          try {
            const s = await api("POST", "/api/v1/schedules", body);
            await viewSchedules();
            toast(`Schedule ${s.name} saved; next fire ${fmtIn(s.next_fire, s.tz)}`);
          } catch (e) {
            const rest = [];
            for (const f of e.fields || []) {
              const k = f.param.startsWith("params.") ? "params" : f.param;
              const line = k === "params" ? `${f.param.slice("params.".length)}: ${f.message}` : f.message;
              if (errors[k]) {
                errors[k].textContent = errors[k].hidden ? line : `${errors[k].textContent}\n${line}`;
                errors[k].hidden = false;
                inputs[k]?.setAttribute("aria-invalid", "true");
              } else rest.push(`${f.param}: ${f.message}`);
            }
            if (!e.fields?.length || rest.length) {
              err.textContent = rest.length ? rest.join("\n") : e.message;
              err.hidden = false;
            }
          }
        },
      },
      rows,
      h("button", { type: "submit", class: "primary" }, "Save schedule"),
      err,
    ),
    h("p", { class: "muted" }, "A schedule runs as its owner, with the owner's grants at each fire. Cron: minute hour day month weekday, or seconds first."),
  );
}
