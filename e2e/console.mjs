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
const pw = (role) => process.env[`OPSLET_PW_${role.toUpperCase()}`];
const step = (name) => console.log(`- ${name}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function signedIn(user, role) {
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 850 }, acceptDownloads: true });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => {
    throw new Error(`page error as ${user}: ${e.message}`);
  });
  await page.goto(base + "/");
  await page.waitForURL(/#\/login$/);
  await page.fill("#login-user", user);
  await page.fill("#login-password", pw(role));
  await page.click("button[type=submit]");
  await page.waitForSelector("#search");
  return { ctx, page };
}

async function shot(page, name) {
  if (!shots) return;
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
}

try {
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
  await page.click("#run");
  await page.waitForURL(/#\/job\//);
  await page.waitForSelector("#result-table", { timeout: 30000 });
  assert.ok(await page.isVisible("#job-progress"), "the progress bar is shown");
  assert.match(await page.textContent("#job-progress"), /ssh\.script: 3\/3 hosts.*ok 3 · failed 0/);
  const factCols = await page.$$eval("#result-table th", (ths) => ths.map((t) => t.textContent));
  assert.ok(factCols[0] === "host" && factCols.includes("kernel") && factCols.includes("load1"), `${factCols}`);
  assert.equal(await page.locator("#result-table tbody tr").count(), 3);
  await shot(page, "job-ssh");

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

  step("hosts page");
  await page.goto(base + "/ui/#/hosts?selector=group%3Aweb");
  await page.waitForSelector("#result-table");
  assert.equal(await page.locator("#result-table tbody tr").count(), 3);
  await shot(page, "hosts");
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
  await admCtx.close();

  console.log("console e2e: all checks passed");
} finally {
  await browser.close();
}
