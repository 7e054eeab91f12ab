// The web client in a real browser: Debian's Chromium, headless, driven by playwright-core.
//
// Run by examples/tests/web_client.rs (`cargo test --workspace`), which starts the brokers and
// passes them in E2E_CONFIG (JSON):
//   { "chromium": "/usr/bin/chromium", "artifacts": "<dir>", "docs_screenshot": "<png>"|null,
//     "replicated": true when the brokers are regions joined by Redis replication,
//     "brokers": [{ "region", "base", "page_url", "admin_token" }] }
// Page i opens on broker i % brokers.length, so two brokers in two regions (joined by a
// replicator) put one window in each region; with one broker both windows share it.
//
// The harness restarts brokers on request: this script prints `control {"op":"stop"|"start",
// "broker":i}` on stdout and waits for one line on stdin.

import assert from "node:assert/strict";
import { mkdirSync, copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const config = JSON.parse(process.env.E2E_CONFIG ?? "");
const WAIT_MS = 15_000;
mkdirSync(config.artifacts, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();

/** Asks the harness to stop or start broker `i` and waits until it has. */
async function control(op, i) {
  console.log(`control ${JSON.stringify({ op, broker: i })}`);
  const { value, done } = await stdinLines.next();
  assert.ok(!done && value.trim() === "ok", `harness answered ${JSON.stringify(value)} to ${op}`);
}

/** Polls `probe` until it returns `{ ok: true }`; fails with what it saw last. */
async function eventually(what, probe, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    const r = await probe();
    if (r.ok) return r.value;
    last = r.seen;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; saw: ${JSON.stringify(last)}`);
    }
    await new Promise((res) => setTimeout(res, 50));
  }
}

function step(text) {
  console.log(`step: ${text}`);
}

/** One browser window with the client, and what it lets a person see. */
class Window {
  constructor(name, page, broker) {
    this.name = name;
    this.page = page;
    this.broker = broker;
    this.problems = [];
    this.phase = "normal";
    page.on("pageerror", (e) => this.problems.push(`${this.phase}: page error: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") this.problems.push(`${this.phase}: console: ${m.text()}`);
    });
    page.on("response", (r) => {
      if (r.status() >= 400) this.problems.push(`${this.phase}: HTTP ${r.status()} ${r.url()}`);
    });
    page.on("requestfailed", (r) => {
      this.problems.push(`${this.phase}: request failed: ${r.url()} ${r.failure()?.errorText}`);
    });
  }

  channel() {
    return this.page.getByLabel("Channel", { exact: true });
  }
  message() {
    return this.page.getByLabel("Message", { exact: true });
  }
  send() {
    return this.page.getByRole("button", { name: "Send", exact: true });
  }

  async text(locator) {
    return ((await locator.textContent()) ?? "").trim();
  }

  async statusIs(what, re) {
    const status = this.page.getByRole("status");
    await eventually(`${this.name}: status ${what}`, async () => {
      const seen = await this.text(status);
      return { ok: re.test(seen), seen };
    });
  }

  async channelStateIs(expected) {
    const hint = this.page.locator("#channel-state");
    await eventually(`${this.name}: "${expected}"`, async () => {
      const seen = await this.text(hint);
      return { ok: seen === expected, seen };
    });
  }

  async noticeMatches(what, re) {
    const alert = this.page.getByRole("alert");
    return eventually(`${this.name}: notice ${what}`, async () => {
      const seen = (await alert.isVisible()) ? await this.text(alert) : "(hidden)";
      return { ok: re.test(seen), seen, value: seen };
    });
  }

  /** The message board, newest first: [{channel, text, meta, origin, time}]. */
  async board() {
    const items = this.page.getByRole("list", { name: "Message board" }).getByRole("listitem");
    return items.evaluateAll((lis) =>
      lis.map((li) => ({
        channel: li.querySelector(".tag")?.textContent,
        text: li.querySelector(".text")?.textContent,
        meta: li.querySelector(".meta")?.textContent,
        origin: li.dataset.origin,
        time: li.querySelector("time")?.dateTime,
      })),
    );
  }

  async boardShows(text) {
    return eventually(`${this.name}: "${text}" on the board`, async () => {
      const board = await this.board();
      const item = board.find((m) => m.text === text);
      return { ok: item !== undefined, seen: board.map((m) => m.text), value: item };
    });
  }

  async pickChannel(name, how) {
    await this.channel().fill(name);
    await this.channel().press(how);
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    // playwright-core gives every launch a fresh, empty profile directory of its own.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    await scenario(browser);
  } finally {
    await browser.close();
  }
}

async function scenario(browser) {
  const { brokers } = config;
  const at = (i) => brokers[i % brokers.length];
  // Window 1 is a desktop window, window 2 a phone.
  const viewports = [
    { width: 760, height: 620 },
    { width: 390, height: 620 },
  ];
  const windows = [];
  for (let i = 0; i < 2; i++) {
    const context = await browser.newContext({ viewport: viewports[i], deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    windows.push(new Window(`window ${i + 1}`, page, at(i)));
  }
  const [w1, w2] = windows;

  step("window 1 opens the URL the broker printed; window 2 opens / and types the key");
  await w1.page.goto(w1.broker.page_url);
  await w1.statusIs("connected", /^connected$/);
  await w2.page.goto(`${w2.broker.base}/`);
  await w2.statusIs("asking for a key", /enter an API key/);
  const key = new URL(w2.broker.page_url).searchParams.get("api_key");
  await w2.page.getByLabel("API key", { exact: true }).fill(key);
  await w2.page.getByLabel("API key", { exact: true }).press("Enter");
  await w2.statusIs("connected", /^connected$/);

  step("both pick tech: window 1 with Enter, window 2 by leaving the field (Tab)");
  await w1.pickChannel("tech", "Enter");
  await w2.pickChannel("tech", "Tab");
  for (const w of windows) await w.channelStateIs("Subscribed to tech.");
  // Enter in the channel field moves on to the message box.
  assert.equal(await w1.page.evaluate(() => document.activeElement?.id), "message");

  step("window 1 sends with Enter; window 2 sees it with channel, origin region and time");
  const before = Date.now();
  await w1.message().fill("hello from window 1");
  await w1.message().press("Enter");
  const seen = await w2.boardShows("hello from window 1");
  assert.equal(seen.channel, "tech");
  assert.equal(seen.origin, w1.broker.region);
  assert.match(seen.meta, new RegExp(`from region ${w1.broker.region} · \\d`));
  const t = Date.parse(seen.time);
  assert.ok(t >= before - 1000 && t <= Date.now() + 1000, `time ${seen.time}`);
  await w1.boardShows("hello from window 1"); // a publisher gets its own message
  assert.equal(await w1.message().inputValue(), "", "the message box is cleared after sending");

  step("window 2 answers with the Send button");
  await w2.message().fill("hi back from window 2");
  await w2.send().click();
  await w1.boardShows("hi back from window 2");

  step("the phone-width window needs no sideways scrolling");
  const overflow = await w2.page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  assert.ok(overflow <= 0, `window 2 scrolls sideways by ${overflow}px`);

  step("window 1 moves to sports: refused, and a message there reaches nobody");
  await w1.pickChannel("sports", "Enter");
  await w1.noticeMatches("subscribe refused", /Cannot subscribe to sports: .*channel_not_allowed/);
  await w1.channelStateIs("Not subscribed: sports was refused.");
  await w1.message().fill("anyone into sports?");
  await w1.message().press("Enter");
  await w1.noticeMatches("publish refused", /Message to sports not sent: .*channel_not_allowed/);

  const shots = [];
  for (const [i, w] of windows.entries()) {
    const path = join(config.artifacts, `window-${i + 1}.png`);
    await w.page.screenshot({ path });
    shots.push(path);
  }
  const boardShot = join(config.artifacts, "board.png");
  await w2.page.locator(".board").screenshot({ path: boardShot });
  await sideBySide(browser, shots, join(config.artifacts, "two-windows.png"));

  step("back on tech; window 2's board gets that next, so the sports message went nowhere");
  await w1.pickChannel("tech", "Enter");
  await w1.channelStateIs("Subscribed to tech.");
  await w1.message().fill("back on tech");
  await w1.message().press("Enter");
  await w2.boardShows("back on tech");
  assert.deepEqual(
    (await w2.board()).map((m) => m.text),
    ["back on tech", "hi back from window 2", "hello from window 1"],
  );

  step("the broker restarts: both windows reconnect with back-off and subscribe again");
  for (const w of windows) w.phase = "restart"; // refused reconnects log console errors
  for (let i = 0; i < brokers.length; i++) await control("stop", i);
  for (const w of windows) await w.statusIs("reconnecting", /^closed: .* reconnecting in \d+ s$/);
  for (let i = 0; i < brokers.length; i++) await control("start", i);
  for (const w of windows) {
    await w.statusIs("connected again", /^connected$/);
    await w.channelStateIs("Subscribed to tech.");
    w.phase = "normal";
  }
  await w2.message().fill("after the restart");
  await w2.message().press("Enter");
  await w1.boardShows("after the restart");

  step("an administrator unsubscribes tech: both windows say so and stay closed");
  // Without replication each broker invalidates its own subscribers. With replication one call
  // reaches every region: ask brokers[0] only; it counts the subscriptions it ended itself.
  const asked = config.replicated ? brokers.slice(0, 1) : brokers;
  for (const [i, broker] of asked.entries()) {
    const local = windows.filter((w) => w.broker === broker).length;
    if (local === 0) continue;
    const resp = await fetch(`${broker.base}/admin/unsubscribe`, {
      method: "POST",
      headers: { authorization: `Bearer ${broker.admin_token}`, "content-type": "application/json" },
      body: JSON.stringify({ channel: "tech" }),
    });
    assert.equal(resp.status, 200, `admin unsubscribe on broker ${i}`);
    assert.deepEqual(await resp.json(), { channel: "tech", invalidated: local });
  }
  for (const w of windows) {
    await w.statusIs("closed by administrator", /^closed by administrator \(subscription invalidated\)$/);
    await w.channelStateIs("Not subscribed: an administrator closed tech.");
    await w.noticeMatches("administrator notice", /An administrator closed the subscription to tech/);
  }
  // The back-off would have retried within 0.65 s, and again within 1.9 s.
  await new Promise((res) => setTimeout(res, 2500));
  for (const w of windows) {
    await w.statusIs("still closed", /^closed by administrator/);
  }
  for (const broker of brokers) {
    const metrics = await (await fetch(`${broker.base}/metrics`)).text();
    assert.ok(
      metrics.split("\n").includes("pubsub_connections 0"),
      `a window reconnected after the administrator closed it:\n${metrics}`,
    );
  }

  for (const w of windows) {
    const unexpected = w.problems.filter(
      (p) => !(p.startsWith("restart: ") && /WebSocket connection to .* failed/.test(p)),
    );
    assert.deepEqual(unexpected, [], `${w.name} had problems`);
  }

  if (config.docs_screenshot) {
    copyFileSync(join(config.artifacts, "two-windows.png"), config.docs_screenshot);
    console.log(`updated ${config.docs_screenshot}`);
  }
  console.log(`screenshots in ${config.artifacts}`);
}

/** The two window screenshots side by side, captioned, as one PNG. */
async function sideBySide(browser, paths, out) {
  const page = await browser.newPage({ viewport: { width: 1240, height: 700 }, deviceScaleFactor: 1 });
  const figures = paths
    .map((p, i) => {
      const src = `data:image/png;base64,${readFileSync(p).toString("base64")}`;
      return `<figure><img src="${src}" alt=""><figcaption>window ${i + 1}</figcaption></figure>`;
    })
    .join("");
  await page.setContent(`<!doctype html><style>
      body { margin: 0; padding: 20px; background: #d8dde3; font: 14px system-ui, sans-serif;
             display: flex; gap: 20px; align-items: flex-start; width: max-content; }
      figure { margin: 0; }
      img { display: block; border: 1px solid #8c959f; border-radius: 6px;
            box-shadow: 0 4px 14px rgb(0 0 0 / 0.18); }
      figcaption { text-align: center; margin-top: 8px; color: #3d444d; }
    </style>${figures}`);
  await page.screenshot({ path: out, fullPage: true });
  await page.close();
}

main().then(
  // The open stdin would keep node running.
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
