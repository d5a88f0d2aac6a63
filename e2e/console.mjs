// End-to-end test of the web console in a real headless Chromium (Debian's), driven by
// playwright-core. tests/console.rs prepares a data dir, starts `opslet serve` and runs this
// with OPSLET_URL, the users' passwords in OPSLET_PW_<ROLE>, and OPSLET_SHOTS (where to save
// screenshots). Exits non-zero on the first failed check, naming it.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";

const base = process.env.OPSLET_URL;
const shots = process.env.OPSLET_SHOTS;
// Two phases around a server restart: the admin's cookies pass between them in OPSLET_STATE.
const phase = process.env.OPSLET_PHASE || "before-restart";
const stateFile = process.env.OPSLET_STATE;
const BIG = Number(process.env.OPSLET_BIG || 1000);
// The same strings tests/console.rs looks for (and must not find) in the audit log.
const CONSOLE_SECRET = "first-deploy-key-value-7731";
const ROTATED_SECRET = "rotated-deploy-key-value-9924";
const RUN_SECRET = "hunter2-but-longer-5521";
const pw = (role) => process.env[`OPSLET_PW_${role.toUpperCase()}`];
const step = (name) => console.log(`- ${name}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/// Every page keeps the durations of its long main-thread tasks (over 50 ms) in `__long`.
async function newPage(ctx, who) {
  await ctx.addInitScript(() => {
    window.__long = [];
    new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration))).observe({ type: "longtask" });
  });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => {
    throw new Error(`page error as ${who}: ${e.message}`);
  });
  // Removals ask first; the test says yes.
  page.on("dialog", (d) => d.accept());
  return page;
}

async function signedIn(user, role, password = pw(role)) {
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 850 }, acceptDownloads: true });
  const page = await newPage(ctx, user);
  await page.goto(base + "/");
  await page.waitForURL(/#\/login$/);
  await page.fill("#login-user", user);
  await page.fill("#login-password", password);
  await page.click("button[type=submit]");
  await page.waitForSelector("#search");
  return { ctx, page };
}

async function shot(page, name) {
  if (!shots) return;
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
}

/// The longest main-thread task since the last call, in ms (0 when none passed 50 ms).
async function longestTask(page) {
  return page.evaluate(() => {
    const m = Math.max(0, ...window.__long);
    window.__long = [];
    return Math.round(m);
  });
}

try {
  if (phase === "before-restart") await beforeRestart();
  else await afterRestart();
  console.log(`${phase}: all checks passed`);
} finally {
  await browser.close();
}

async function beforeRestart() {
  // ---- sign in ------------------------------------------------------------------------------------
  step("a wrong password is refused on the page");
  {
    const ctx = await browser.newContext({ viewport: { width: 1366, height: 850 } });
    const page = await ctx.newPage();
    await page.goto(base + "/");
    await page.waitForSelector("#login-user");
    await shot(page, "login");
    await page.fill("#login-user", "ola");
    await page.fill("#login-password", "not-the-password");
    await page.click("button[type=submit]");
    await page.waitForSelector(".error:not([hidden])");
    assert.match(await page.textContent(".error"), /wrong user name or password/);
    // The session cookie is HttpOnly: page scripts cannot read it.
    assert.equal(await page.evaluate(() => document.cookie), "");
    await ctx.close();
  }

  step("operator signs in, searches the market");
  const { ctx: opCtx, page } = await signedIn("ola", "operator");
  assert.equal(await page.evaluate(() => document.cookie), "", "the session cookie is not visible to scripts");
  const navText = await page.textContent("#nav");
  assert.ok(!navText.includes("Publish") && !navText.includes("Audit"), `operator nav: ${navText}`);
  await page.waitForSelector("section.featured", { timeout: 10000 });
  assert.ok((await page.textContent("section.featured")).includes("fleet-report"));
  assert.ok(!(await page.textContent("main")).includes("null"), "no stray values on the page");
  await shot(page, "market");
  await page.fill("#search", "fleet reprot");
  await page.press("#search", "Enter");
  await page.waitForSelector("#results li.hit a.title");
  const first = await page.textContent("#results li.hit a.title");
  assert.equal(first, "fleet-report", "typo-tolerant search finds the applet first");
  // Two letters swapped in a short word, as `opslet search` takes them.
  await page.fill("#search", "wiat");
  await page.press("#search", "Enter");
  await page.waitForFunction(() => document.querySelector("#results")?.textContent.includes("fleet-wait"));
  // The issue's own example: "slwo" finds the applet described as slow, as `opslet search` does.
  await page.fill("#search", "slwo");
  await page.press("#search", "Enter");
  await page.waitForFunction(() => document.querySelector("#results li.hit a.title")?.textContent === "fleet-wait");
  await page.fill("#search", "fleet reprot");
  await page.press("#search", "Enter");
  await page.waitForFunction(() => document.querySelector("#results li.hit a.title")?.textContent === "fleet-report");
  assert.ok((await page.textContent("#results")).includes("cmdb"), "permission badge shown");
  await shot(page, "market-search");

  step("open the applet: description, versions, params form");
  await page.click("#results li.hit a.title");
  await page.waitForSelector("#run-form");
  const appletText = await page.textContent("main");
  assert.ok(appletText.includes("Score the selected hosts"), "description");
  assert.ok(appletText.includes("cmdb: read"), "permission badge with scope");
  assert.ok(appletText.includes("1.0.0") && appletText.includes("1.1.0") && appletText.includes("add mode param"), "versions with messages");
  assert.equal(await page.getAttribute("#p-threshold", "type"), "number");
  assert.equal(await page.evaluate(() => document.querySelector("#p-mode").tagName), "SELECT");
  assert.ok((await page.textContent("label[for=p-targets]")).includes("*"), "required mark");

  step("host selector preview");
  await page.fill("#p-targets", "group:web");
  await page.waitForFunction(() => document.querySelector("#p-targets-preview")?.textContent.includes("3 host(s)"));
  const previewText = await page.textContent("#p-targets-preview");
  assert.ok(previewText.includes("web1") && previewText.includes("web3") && !previewText.includes("[object"), `hosts by name: ${previewText}`);
  await page.fill("#p-targets", "group:nosuch");
  await page.waitForFunction(() => document.querySelector("#p-targets-preview")?.textContent.includes("No host matches"));

  step("a bad value is refused per field");
  await page.fill("#p-targets", "group:web");
  await page.fill("#p-threshold", "500");
  await page.click("#run");
  await page.waitForSelector("#p-threshold-err:not([hidden])");
  assert.match(await page.textContent("#p-threshold-err"), /above the maximum 100/);
  assert.equal(await page.getAttribute("#p-threshold", "aria-invalid"), "true");
  // Fixing the value clears its error at once.
  await page.fill("#p-threshold", "50");
  assert.ok(await page.isHidden("#p-threshold-err"), "the error goes with the bad value");
  assert.equal(await page.getAttribute("#p-threshold", "aria-invalid"), null);
  await page.fill("#p-threshold", "500");
  await page.click("#run");
  await page.waitForSelector("#p-threshold-err:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#p-targets-preview")?.textContent.includes("3 host(s)"));
  await shot(page, "applet-invalid");
  await page.fill("#p-targets", "group:nosuch");
  await page.fill("#p-threshold", "50");
  await page.click("#run");
  await page.waitForSelector("#p-targets-err:not([hidden])");
  assert.match(await page.textContent("#p-targets-err"), /matches no host in the cmdb/);

  step("a good value runs; the log streams live; the result is a table");
  await page.fill("#p-targets", "group:web");
  await page.selectOption("#p-mode", "full");
  // Keyboard: the form submits with Enter from a field.
  await page.focus("#p-threshold");
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/job\//);
  const jobId = page.url().split("#/job/")[1];
  await page.waitForFunction(() => document.querySelectorAll("#job-log li").length >= 2);
  const stillRunning = await page.evaluate(() => !document.querySelector("#result-table"));
  assert.ok(stillRunning, "log lines arrive while the run is still going");
  await page.waitForSelector("#result-table", { timeout: 20000 });
  assert.ok((await page.textContent("#job-log")).includes("in full mode"));
  assert.equal(await page.locator("#result-table tbody tr").count(), 3);
  assert.ok((await page.textContent("#job-status")).includes("ok"));
  assert.ok(await page.isHidden("#job-progress"), "no progress bar for a run without hosts fan-out");
  await shot(page, "job");

  step("sort, filter and download the result");
  const headers = await page.$$eval("#result-table th", (ths) => ths.map((t) => t.textContent));
  assert.deepEqual(headers, ["host", "address", "flagged", "score"], "the host column leads");
  const scores = async () => page.$$eval("#result-table tbody tr", (rows) => rows.map((r) => Number(r.children[3].textContent)));
  await page.click("#result-table th:nth-child(4) button");
  const asc = await scores();
  assert.ok(asc.every((x) => Number.isFinite(x)), `scores: ${asc}`);
  assert.deepEqual(asc, [...asc].sort((a, b) => a - b), "sorted ascending");
  await page.click("#result-table th:nth-child(4) button");
  const desc = await scores();
  assert.deepEqual(desc, [...desc].sort((a, b) => b - a), "sorted descending");
  assert.notDeepEqual(asc, desc, "the rows moved");
  await page.fill("#result-filter", "web2");
  assert.equal(await page.locator("#result-table tbody tr").count(), 1);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")]);
  const csv = fs.readFileSync(await download.path(), "utf8");
  assert.match(csv, /^host,address,flagged,score\r\nweb2,192\.0\.2\.11,(true|false),\d+\r\n$/);
  await page.fill("#result-filter", "");

  step("jobs list shows the run");
  await page.click("#nav a[href='#/jobs']");
  await page.waitForSelector("#jobs");
  assert.ok((await page.textContent("#jobs")).includes("fleet-report@1.1.0"));

  step("dry run from the form");
  await page.goto(base + "/ui/#/applet/fleet-report");
  await page.waitForSelector("#run-form");
  await page.fill("#p-targets", "web1");
  await page.fill("#p-threshold", "10");
  await page.click("#dry-run");
  await page.waitForSelector("#result-table", { timeout: 20000 });
  assert.ok((await page.textContent("#job-status")).includes("dry run"));

  step("an ssh applet shows per-host progress and a facts table");
  await page.goto(base + "/ui/#/applet/host-facts");
  await page.waitForSelector("#run-form");
  await page.fill("#p-targets", "group:fleet");
  await longestTask(page);
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-table", { timeout: 30000 });
  assert.ok(await page.isVisible("#job-progress"), "the progress bar is shown");
  assert.match(await page.textContent("#job-progress"), /ssh\.script: 3\/3 hosts.*ok 3 · failed 0/);
  const factCols = await page.$$eval("#result-table th", (ths) => ths.map((t) => t.textContent));
  assert.ok(factCols[0] === "host" && factCols.includes("kernel") && factCols.includes("load1"), `${factCols}`);
  assert.equal(await page.locator("#result-table tbody tr").count(), 3);
  const longSmall = await longestTask(page);
  await shot(page, "job-ssh");

  step(`a run across ${BIG} hosts shows its per-host table a page at a time`);
  await page.goto(base + "/ui/#/applet/host-facts");
  await page.waitForSelector("#run-form");
  await page.fill("#p-targets", "group:big");
  await page.waitForFunction((n) => document.querySelector("#p-targets-preview")?.textContent.includes(`${n} host(s)`), BIG);
  await page.fill("#p-timeout", "300");
  await longestTask(page);
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-table", { timeout: 600000 });
  const longBig = await longestTask(page);
  const bigProgress = await page.textContent("#job-progress");
  if (!bigProgress.includes(`ok ${BIG} · failed 0`)) {
    // Name what the failed hosts said, so a failure here can be read from the log alone.
    const id = page.url().split("#/job/")[1];
    const job = await page.evaluate(async (id) => (await fetch(`/api/v1/jobs/${id}`)).json(), id);
    const rows = Array.isArray(job.result) ? job.result : [];
    console.log("failed hosts:", JSON.stringify(rows.filter((r) => r.error).slice(0, 20), null, 1));
  }
  assert.match(bigProgress, new RegExp(`ssh\\.script: ${BIG}/${BIG} hosts.*ok ${BIG} · failed 0`));
  assert.equal(await page.textContent("#result-count"), `${BIG} of ${BIG} row(s)`);
  assert.equal(await page.locator("#result-table tbody tr").count(), 200, "one page of rows is drawn, not all");
  assert.equal(await page.textContent("#rows-shown"), `rows 1–200 of ${BIG}`);
  const firstHost = await page.textContent("#result-table tbody tr td");
  await page.click("#rows-next");
  assert.equal(await page.textContent("#rows-shown"), `rows 201–400 of ${BIG}`);
  assert.notEqual(await page.textContent("#result-table tbody tr td"), firstHost, "the next page shows other hosts");
  await page.fill("#result-filter", "big0777");
  assert.equal(await page.locator("#result-table tbody tr").count(), 1, "the filter searches every row, not the page");
  assert.ok(await page.isHidden("#result-pager"), "one page needs no pager");
  await page.fill("#result-filter", "");
  await page.click("#result-table th:nth-child(1) button");
  await page.click("#result-table th:nth-child(1) button");
  assert.equal(await page.textContent("#result-table tbody tr td"), "big1000", "sorting takes every row");
  const [bigCsv] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")]);
  assert.equal(fs.readFileSync(await bigCsv.path(), "utf8").trim().split("\r\n").length, BIG + 1, "the download has every row");
  await shot(page, "job-hosts");
  // The finished job's page opened again, when the machine is no longer busy with the run.
  const jobUrl = page.url();
  await page.goto(base + "/ui/#/jobs");
  await page.waitForSelector("#jobs");
  await page.waitForTimeout(1000);
  await longestTask(page);
  await page.goto(jobUrl);
  await page.waitForSelector("#result-table");
  await page.waitForTimeout(1000);
  const longReopen = await longestTask(page);
  console.log(`  longest main-thread task (ms, under 50 counts as 0): run on 3 hosts ${longSmall}; run on ${BIG} hosts ${longBig}; its finished page opened again ${longReopen}`);

  step("a running job can be cancelled");
  await page.goto(base + "/ui/#/applet/fleet-wait");
  await page.waitForSelector("#run-form");
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForFunction(() => document.querySelector("#job-log")?.textContent.includes("waiting"));
  // The status reads as a status, and the duration counts while it runs.
  await page.waitForFunction(() => document.querySelector("#job-status")?.textContent.includes("running"));
  assert.ok(!(await page.textContent("#job-status")).includes("null"), "no `null` beside the status");
  const d1 = await page.textContent("#job-duration");
  await page.waitForTimeout(2200);
  const d2 = await page.textContent("#job-duration");
  assert.notEqual(d1, d2, `the duration counts: ${d1} then ${d2}`);
  await page.click("#cancel");
  await page.waitForFunction(() => document.querySelector("#job-status")?.textContent.includes("cancelled"), null, { timeout: 15000 });

  step("a many-line param keeps its lines; params in declared order");
  await page.goto(base + "/ui/#/applet/log-excerpt");
  await page.waitForSelector("#run-form");
  assert.equal(await page.evaluate(() => document.querySelector("#p-text").tagName), "TEXTAREA");
  const order = await page.$$eval("#run-form .field > label", (ls) => ls.map((l) => l.getAttribute("for")));
  assert.deepEqual(order, ["p-text", "p-min_level", "p-mode", "p-top"], "declared order, the required field first");
  await page.fill("#p-text", "2024-05-01T10:00:00Z ERROR [api] timeout\n2024-05-01T10:00:01Z INFO [api] retry\n2024-05-01T10:00:02Z ERROR [db] gone");
  await page.selectOption("#p-mode", "summary");
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-json", { timeout: 20000 });
  const summary = JSON.parse(await page.textContent("#result-json"));
  assert.equal(summary.lines, 3, `three lines reached the applet: ${JSON.stringify(summary)}`);

  step("a job runs again with its params");
  await page.click("#run-again");
  await page.waitForSelector("#run-form");
  assert.equal(await page.inputValue("#p-mode"), "summary", "the job's params fill the form");
  assert.ok((await page.inputValue("#p-text")).includes("\n2024-05-01T10:00:01Z INFO"), "with their lines");
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-json", { timeout: 20000 });
  assert.equal(JSON.parse(await page.textContent("#result-json")).lines, 3);

  step("a secret param is not kept: its job shows it redacted, and a re-run leaves it blank");
  await page.goto(base + "/ui/#/applet/fleet-login");
  await page.waitForSelector("#run-form");
  assert.equal(await page.getAttribute("#p-password", "type"), "password");
  await page.fill("#p-account", "svc-backup");
  await page.fill("#p-password", RUN_SECRET);
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-json", { timeout: 20000 });
  assert.equal(JSON.parse(await page.textContent("#result-json")).length, RUN_SECRET.length, "the applet got the value");
  assert.ok((await page.textContent("main")).includes("<redacted>"), "the job's params show the secret redacted");
  assert.ok(!(await page.content()).includes(RUN_SECRET), "the value is nowhere on the job page");
  await page.click("#run-again");
  await page.waitForSelector("#run-form");
  assert.equal(await page.inputValue("#p-account"), "svc-backup", "other params are filled in");
  assert.equal(await page.inputValue("#p-password"), "", "the secret param is blank");
  await page.click("#run");
  await page.waitForSelector("#p-password-err:not([hidden])");

  step("hosts page");
  await page.goto(base + "/ui/#/hosts?selector=group%3Aweb");
  await page.waitForSelector("#result-table");
  assert.equal(await page.locator("#result-table tbody tr").count(), 3);
  await shot(page, "hosts");
  step("artifacts page: a store's objects with their versions");
  await page.goto(base + `/ui/#/artifacts?connection=store&bucket=${process.env.OPSLET_ARTIFACT_BUCKET}&versions=yes`);
  await page.waitForSelector("#artifacts");
  assert.equal(await page.locator("#artifacts tbody tr").count(), 2, "two versions of agent/agent.tgz");
  assert.match(await page.textContent("#artifact-summary"), /versioning Enabled · 2 object/);
  assert.equal(await page.locator("#artifacts tbody tr .badge").first().textContent(), "latest");
  await shot(page, "artifacts");
  step("CSV downloads neutralise spreadsheet formulas");
  await page.goto(base + "/ui/#/hosts?selector=group%3Asheet");
  await page.waitForFunction(() => document.querySelector("#result-count")?.textContent.startsWith("1 of"));
  const [sheet] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")]);
  const sheetCsv = fs.readFileSync(await sheet.path(), "utf8");
  assert.ok(sheetCsv.includes("\ncalc1,'=1+1,"), sheetCsv);
  await opCtx.close();

  // ---- auditor ------------------------------------------------------------------------------------
  step("auditor opens the run's audit entry; the chain verifies");
  const { ctx: audCtx, page: aud } = await signedIn("aud", "auditor");
  assert.ok((await aud.textContent("#nav")).includes("Audit"));
  await aud.goto(`${base}/ui/#/job/${jobId}`);
  await aud.waitForSelector("#audit-link");
  await aud.click("#audit-link");
  await aud.waitForSelector("#audit tbody tr");
  assert.match(await aud.textContent("#chain"), /Chain intact/);
  const kinds = await aud.$$eval("#audit tbody tr td:nth-child(3)", (tds) => tds.map((t) => t.textContent));
  assert.ok(kinds.includes("run.start") && kinds.includes("run.end"), `kinds: ${kinds}`);
  await aud.locator("#audit tbody tr", { hasText: "run.start" }).locator("button").click();
  const detail = await aud.textContent("#audit-detail");
  assert.ok(detail.includes(jobId) && detail.includes('"kind": "run.start"'), detail);
  await shot(aud, "audit");
  step("the audit log lists newest first, a page at a time");
  await aud.goto(`${base}/ui/#/audit`);
  await aud.waitForFunction(() => document.querySelectorAll("#audit tbody tr").length === 100);
  const seqsOf = async () => aud.$$eval("#audit tbody tr td:first-child", (tds) => tds.map((t) => Number(t.textContent)));
  const page1 = await seqsOf();
  assert.ok(page1.length === 100 && page1.every((x, i) => i === 0 || page1[i - 1] > x), `newest first: ${page1.slice(0, 5)}`);
  await aud.click("#older");
  await aud.waitForFunction((last) => Number(document.querySelector("#audit tbody tr td")?.textContent) < last, page1[99]);
  const page2 = await seqsOf();
  assert.equal(page2[0], page1[99] - 1, "the next page starts where the first ended");
  // A record opens above the list, where it can be seen.
  await aud.locator("#audit tbody tr").first().locator("button").click();
  const box = await aud.locator("#audit-detail").boundingBox();
  assert.ok(box && box.y < 900, `the record is in view: ${JSON.stringify(box)}`);
  await audCtx.close();

  // ---- viewer -------------------------------------------------------------------------------------
  step("a viewer cannot run or publish, on the page or through the API");
  const { ctx: viewCtx, page: viewer } = await signedIn("vic", "viewer");
  const vnav = await viewer.textContent("#nav");
  assert.ok(!vnav.includes("Publish") && !vnav.includes("Audit"), vnav);
  await viewer.goto(`${base}/ui/#/applet/fleet-report`);
  await viewer.waitForSelector("#no-run");
  assert.equal(await viewer.locator("#run-form").count(), 0);
  const statuses = await viewer.evaluate(async () => {
    const me = await (await fetch("/api/v1/session")).json();
    const post = (url, body, csrf) =>
      fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body }).then((r) => r.status);
    return {
      run: await post("/api/v1/applets/fleet-report/run", JSON.stringify({ targets: "web1", threshold: 1 }), me.csrf),
      publish: await post("/api/v1/registry/publish", "{}", me.csrf),
      noCsrf: await post("/api/v1/applets/fleet-report/run", "{}", ""),
    };
  });
  assert.deepEqual(statuses, { run: 403, publish: 403, noCsrf: 403 });
  await viewCtx.close();

  // ---- publisher ----------------------------------------------------------------------------------
  step("a publisher publishes a bundle and rolls back");
  const { ctx: pubCtx, page: pub } = await signedIn("pat", "publisher");
  await pub.click("#nav a[href='#/publish']");
  await pub.waitForSelector("#bundle");
  await pub.setInputFiles("#bundle", process.env.OPSLET_BUNDLE);
  await pub.fill("#publish-message", "from the console");
  await pub.click("button[type=submit]");
  await pub.waitForSelector("p.ok a");
  assert.match(await pub.textContent("p.ok"), /Published disk-usage@1\.0\.0/);
  await shot(pub, "publish");
  // An applet with one version has nothing to roll back to: no button.
  await pub.goto(`${base}/ui/#/applet/fleet-wait`);
  await pub.waitForSelector("#versions, table");
  assert.equal(await pub.locator("#rollback").count(), 0, "no roll back offered without a previous version");
  await pub.goto(`${base}/ui/#/applet/fleet-report`);
  await pub.waitForSelector("text=Roll back to the previous version");
  // Yank 1.0.0, then undo it.
  const row100 = pub.locator("tbody tr", { hasText: "first version" });
  await row100.locator("button", { hasText: "Yank" }).click();
  await pub.waitForFunction(() => document.querySelector("#toast")?.textContent.includes("Yanked 1.0.0"));
  await pub.locator("tbody tr", { hasText: "first version" }).locator("button", { hasText: "Un-yank" }).click();
  await pub.waitForFunction(() => document.querySelector("#toast")?.textContent.includes("Un-yanked 1.0.0"));
  await pub.click("text=Roll back to the previous version");
  await pub.waitForFunction(() => document.querySelector("#toast")?.textContent.includes("Rolled back"));
  await pub.waitForFunction(() => document.querySelector("main h1")?.textContent.includes("1.0.0"));
  await pubCtx.close();

  step("an admin pages through more than a thousand jobs, newest first");
  const { ctx: admCtx, page: adm } = await signedIn("ada", "admin");
  await adm.goto(`${base}/ui/#/jobs?applet=tick`);
  await adm.waitForSelector("#jobs tbody tr");
  const seen = new Set();
  let pages = 0;
  for (;;) {
    const ids = await adm.$$eval("#jobs tbody tr td:first-child a", (as) => as.map((a) => a.getAttribute("href")));
    ids.forEach((x) => seen.add(x));
    pages += 1;
    if ((await adm.locator("#older").count()) === 0) break;
    const firstBefore = ids[0];
    await adm.click("#older");
    await adm.waitForFunction((f) => document.querySelector("#jobs tbody tr td a")?.getAttribute("href") !== f, firstBefore);
  }
  assert.equal(seen.size, 1050, `every job once, over ${pages} pages`);
  assert.equal(pages, 21);
  // The server restarts now; the admin's browser keeps its cookies.
  await admCtx.storageState({ path: stateFile });
  await admCtx.close();
}

async function afterRestart() {
  step("after the server restarted, the admin is still signed in");
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 850 }, storageState: stateFile });
  const adm = await newPage(ctx, "ada");
  await adm.goto(`${base}/ui/#/admin`);
  await adm.waitForSelector("#users tbody tr");
  assert.ok(!adm.url().includes("#/login"), "no sign-in page");
  assert.ok((await adm.textContent("#nav")).includes("Admin"));
  assert.match(await adm.textContent("#who"), /ada · admin/);

  const toastSays = (text) => adm.waitForFunction((t) => document.querySelector("#toast")?.textContent.includes(t), text);
  const row = (table, text) => adm.locator(`${table} tbody tr`, { hasText: text });

  step("admin: users with roles, groups and passwords");
  await adm.fill("#add-user input[name=name]", "nina");
  await adm.selectOption("#add-user select[name=role]", "operator");
  await adm.fill("#add-user input[name=groups]", "night");
  await adm.click("#add-user button[type=submit]");
  await adm.waitForSelector("#users tr[data-user=nina]");
  assert.equal(await adm.inputValue("#users tr[data-user=nina] select.role"), "operator");
  assert.equal(await adm.inputValue("#users tr[data-user=nina] form.groups input"), "night");
  // A bad name is refused beside the form.
  await adm.fill("#add-user input[name=name]", "Bad Name");
  await adm.click("#add-user button[type=submit]");
  await adm.waitForSelector("#add-user .error:not([hidden])");
  assert.match(await adm.textContent("#add-user .error"), /user name/);
  // A password too short is refused; a good one is set, and nina signs in with it.
  await adm.fill("#users tr[data-user=nina] form.password input", "short");
  await adm.click("#users tr[data-user=nina] form.password button");
  await adm.waitForFunction(() => document.querySelector("#toast.bad")?.textContent.includes("too short"));
  await adm.fill("#users tr[data-user=nina] form.password input", "nina-console-pw-1");
  await adm.click("#users tr[data-user=nina] form.password button");
  await toastSays("Password set for nina");
  await adm.waitForFunction(() => document.querySelector("#users tr[data-user=nina]")?.textContent.includes("set"));
  const { ctx: ninaCtx, page: nina } = await signedIn("nina", "operator", "nina-console-pw-1");
  const whoami = () => nina.evaluate(async () => (await (await fetch("/api/v1/session")).json()).role);
  assert.equal(await whoami(), "operator");
  // A role change applies to her open session at once.
  await adm.selectOption("#users tr[data-user=nina] select.role", "viewer");
  await toastSays("nina is now viewer");
  assert.equal(await whoami(), "viewer");
  await adm.fill("#users tr[data-user=nina] form.groups input", "night, web");
  await adm.click("#users tr[data-user=nina] form.groups button");
  await toastSays("Groups of nina saved");
  assert.equal(await adm.inputValue("#users tr[data-user=nina] form.groups input"), "night, web");
  // The only admin cannot step down: the page says why and still shows her as admin.
  await adm.selectOption("#users tr[data-user=ada] select.role", "viewer");
  await adm.waitForFunction(() => document.querySelector("#toast.bad")?.textContent.includes("only admin"));
  assert.equal(await adm.inputValue("#users tr[data-user=ada] select.role"), "admin");
  await shot(adm, "admin-users");
  await adm.click("#users tr[data-user=nina] button.remove");
  await toastSays("Removed nina");
  assert.equal(await adm.locator("#users tr[data-user=nina]").count(), 0);
  assert.equal(await nina.evaluate(async () => (await fetch("/api/v1/session")).status), 401, "her session ended with her account");
  await ninaCtx.close();

  step("admin: tokens are shown once and revoked");
  await adm.click("#tab-tokens");
  await adm.waitForSelector("#add-token");
  await adm.selectOption("#add-token select[name=user]", "ola");
  await adm.fill("#add-token input[name=label]", "ci pipeline");
  await adm.fill("#add-token input[name=expires]", "30d");
  await adm.click("#add-token button[type=submit]");
  await adm.waitForSelector("#new-token");
  const token = (await adm.textContent("#new-token code")).trim();
  assert.match(token, /^opslet_[0-9a-f]{8}_/);
  const tokenId = token.split("_")[1];
  const withToken = (t) => adm.evaluate(async (t) => (await fetch("/api/v1/applets", { headers: { Authorization: `Bearer ${t}` } })).status, t);
  assert.equal(await withToken(token), 200, "the new token works");
  assert.ok((await row("#tokens", tokenId).textContent()).includes("ci pipeline"));
  // Shown once: the list never has the secret, and it is gone when the tab is shown again.
  assert.ok(!(await adm.textContent("#tokens")).includes(token.split("_")[2]));
  await adm.click("#tab-grants");
  await adm.waitForSelector("#add-grant");
  await adm.click("#tab-tokens");
  await adm.waitForSelector("#tokens");
  assert.equal(await adm.locator("#new-token").count(), 0);
  await row("#tokens", tokenId).locator("button.revoke").click();
  await toastSays(`Revoked ${tokenId}`);
  assert.ok((await row("#tokens", tokenId).textContent()).includes("revoked"));
  assert.equal(await withToken(token), 401, "revoked at once");
  await shot(adm, "admin-tokens");

  step("admin: grants");
  await adm.click("#tab-grants");
  await adm.waitForSelector("#add-grant");
  await adm.fill("#add-grant input[name=subject]", "Bad Name");
  await adm.fill("#add-grant input[name=pattern]", "tick*");
  await adm.click("#add-grant button[type=submit]");
  await adm.waitForSelector("#add-grant .error:not([hidden])");
  await adm.fill("#add-grant input[name=subject]", "group:night");
  await adm.click("#add-grant button[type=submit]");
  await toastSays("group:night may run tick*");
  await row("#grants", "group:night").locator("button.remove").click();
  await toastSays("Grant removed");
  assert.equal(await row("#grants", "group:night").count(), 0);

  step("admin: webhooks, their secret shown once");
  await adm.click("#tab-hooks");
  await adm.waitForSelector("#add-hook");
  await adm.fill("#add-hook input[name=name]", "zbx-problem");
  await adm.fill("#add-hook input[name=applet]", "tick");
  await adm.click("#add-hook button[type=submit]");
  await adm.waitForSelector("#new-hook-secret");
  const hookSecret = (await adm.textContent("#new-hook-secret code")).trim();
  assert.ok(hookSecret.length >= 32, hookSecret);
  assert.ok(!(await adm.textContent("#hooks")).includes(hookSecret), "the list never shows it");
  await row("#hooks", "zbx-problem").locator("button.remove").click();
  await toastSays("Removed zbx-problem");

  step("admin: secrets by name only; set and rotated without being shown");
  await adm.click("#tab-secrets");
  await adm.waitForSelector("#add-secret");
  assert.equal(await adm.getAttribute("#add-secret input[name=value]", "type"), "password");
  await adm.fill("#add-secret input[name=name]", "deploy-key");
  await adm.fill("#add-secret input[name=value]", CONSOLE_SECRET);
  await adm.click("#add-secret button[type=submit]");
  await toastSays("Secret deploy-key set");
  await adm.waitForSelector("#secrets tr[data-secret=deploy-key]");
  assert.ok((await row("#secrets", "deploy-key").textContent()).includes("ada"), "who changed it");
  await adm.fill("#secrets tr[data-secret=deploy-key] form.rotate input", ROTATED_SECRET);
  await adm.click("#secrets tr[data-secret=deploy-key] form.rotate button");
  await toastSays("Secret deploy-key rotated");
  const html = await adm.content();
  assert.ok(!html.includes(CONSOLE_SECRET) && !html.includes(ROTATED_SECRET), "no value on the page");
  const listed = await adm.evaluate(async () => (await fetch("/api/v1/secrets")).text());
  assert.ok(listed.includes("deploy-key") && !listed.includes("value-"), listed);
  await shot(adm, "admin-secrets");

  step("every change made in the console is audited, as the admin who made it");
  const kinds = await adm.evaluate(async () => {
    const recs = await (await fetch("/api/v1/audit?caller=ada&order=newest&limit=200")).json();
    return [...new Set(recs.map((r) => r.kind))];
  });
  for (const k of ["auth.user.add", "auth.password.set", "auth.user.change", "auth.user.rm", "auth.token.create", "auth.token.revoke", "auth.grant.add", "auth.grant.rm", "hook.add", "hook.rm", "secret.set", "secret.update"]) {
    assert.ok(kinds.includes(k), `${k} in ${kinds}`);
  }
  await ctx.close();

  step("no other role gets the admin pages, on the page or through the API");
  for (const [user, role] of [["ola", "operator"], ["vic", "viewer"], ["pat", "publisher"], ["aud", "auditor"]]) {
    const { ctx: c, page: p } = await signedIn(user, role);
    assert.ok(!(await p.textContent("#nav")).includes("Admin"), `${role} nav`);
    await p.goto(`${base}/ui/#/admin/users`);
    await p.waitForSelector("main .error");
    assert.match(await p.textContent("main .error"), new RegExp(`${user} \\(${role}\\) may not administer`));
    assert.equal(await p.locator("#users").count(), 0);
    const codes = await p.evaluate(async (me) => {
      const s = await (await fetch("/api/v1/session")).json();
      const send = (method, url, body) =>
        fetch(url, { method, headers: { "Content-Type": "application/json", "X-CSRF-Token": s.csrf }, body: body && JSON.stringify(body) }).then((r) => r.status);
      return [
        await send("GET", "/api/v1/users"),
        await send("PATCH", `/api/v1/users/${me}`, { role: "admin" }),
        await send("POST", "/api/v1/users", { name: "sneaky", role: "admin" }),
        await send("PUT", "/api/v1/secrets/deploy-key", { value: "x" }),
        await send("GET", "/api/v1/tokens"),
        await send("POST", "/api/v1/grants", { subject: me, pattern: "*" }),
        await send("POST", "/api/v1/hooks", { name: "h", applet: "tick" }),
      ];
    }, user);
    assert.deepEqual(codes, [403, 403, 403, 403, 403, 403, 403], `${role}: ${codes}`);
    await c.close();
  }
  step("a risky run waits for approval with its plan; its requester cannot approve it; an admin does");
  const { ctx: olaCtx, page: ola } = await signedIn("ola", "operator");
  await ola.goto(`${base}/ui/#/applet/fleet-tag`);
  await ola.waitForSelector("#needs-approval");
  assert.match(await ola.textContent("#needs-approval"), /cmdb write \(rule inventory-writes\): 1 by role admin/);
  await ola.fill("#p-hosts", "group:web");
  await ola.fill("#p-tag", "approved-in-browser");
  await ola.click("#run");
  await ola.waitForURL(/#\/job\//);
  const jobId = ola.url().split("#/job/")[1];
  await ola.waitForSelector("#approval-plan table");
  assert.equal(await ola.locator("#job-status").textContent(), "awaiting_approval");
  const targets = await ola.$$eval("#plan tbody tr td:nth-child(2)", (tds) => tds.map((t) => t.textContent));
  assert.deepEqual(targets, ["web1", "web2", "web3"]);
  assert.match(await ola.textContent("#plan tbody tr:first-child"), /cmdb\.set.*approved-in-browser/);
  assert.equal(await ola.locator("#approve").count(), 0, "no Approve button for the requester");
  assert.match(await ola.textContent("#self-note"), /someone else must approve it/);
  const selfCode = await ola.evaluate(async (id) => {
    const s = await (await fetch("/api/v1/session")).json();
    const r = await fetch(`/api/v1/jobs/${id}/approve`, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": s.csrf }, body: "{}" });
    return [r.status, (await r.json()).error.message];
  }, jobId);
  assert.equal(selfCode[0], 403);
  assert.match(selfCode[1], /self-approval is refused/);
  await shot(ola, "approval");

  const { ctx: apCtx, page: ap } = await signedIn("ada", "admin");
  await ap.goto(`${base}/ui/#/approvals`);
  await ap.waitForSelector(`#approvals tr[data-job="${jobId}"]`);
  assert.match(await ap.textContent(`#approvals tr[data-job="${jobId}"]`), /fleet-tag@1\.0\.0.*ola.*inventory-writes.*0 of 1.*3 steps/);
  await shot(ap, "approvals");
  await ap.click(`#approvals tr[data-job="${jobId}"] a.button`);
  await ap.waitForSelector("#approve");
  await ap.fill("#decision-message", "tagging the web tier, CHG-1234");
  await ap.click("#approve");
  // The ola page follows the job: approved, then run.
  await ola.waitForFunction(() => document.querySelector("#job-status")?.textContent === "ok", null, { timeout: 20000 });
  assert.match(await ola.textContent("#approval-decisions"), /approved ada.*CHG-1234/);
  assert.match(await ola.textContent("#job-result"), /tagged/);
  await ap.waitForFunction(() => document.querySelector("#job-status")?.textContent === "ok");
  await olaCtx.close();

  step("schedules: a wrongly cased zone is refused beside its field, then a schedule is added, paused, resumed and removed");
  await ap.goto(`${base}/ui/#/schedules`);
  await ap.waitForSelector("#add-schedule");
  await ap.fill("#schedule-name", "tick-morning");
  await ap.fill("#schedule-applet", "tick");
  await ap.fill("#schedule-cron", "0 0 9 * * *");
  await ap.fill("#schedule-tz", "asia/shanghai");
  await ap.click("#add-schedule button[type=submit]");
  await ap.waitForSelector("#schedule-tz-error:not([hidden])");
  assert.match(await ap.textContent("#schedule-tz-error"), /Asia\/Shanghai/);
  await ap.fill("#schedule-tz", "Asia/Shanghai");
  await ap.click("#add-schedule button[type=submit]");
  await ap.waitForSelector('tr[data-schedule="tick-morning"]');
  // 09:00 in Shanghai is 01:00 UTC.
  const next = await ap.evaluate(async () => (await (await fetch("/api/v1/schedules/tick-morning")).json()).next_fire);
  assert.match(next, /T01:00:00/);
  await shot(ap, "schedules");
  await ap.click('tr[data-schedule="tick-morning"] button.pause');
  await ap.waitForSelector('tr[data-schedule="tick-morning"] .badge.warn');
  await ap.click('tr[data-schedule="tick-morning"] button.resume');
  await ap.waitForSelector('tr[data-schedule="tick-morning"] button.pause');
  await ap.click('tr[data-schedule="tick-morning"] button.remove');
  await ap.waitForFunction(() => !document.querySelector('tr[data-schedule="tick-morning"]'));
  await apCtx.close();
}
