// A real Chromium (Debian's, driven by playwright-core) that the Python tests steer over stdin/stdout: one JSON
// command per line in, one JSON answer per line out. The tests keep the scenario in Python, next to the stack
// they start; this file only does what a person at the browser would do.
//
//   {"id": 1, "op": "goto", "url": "..."}            {"id": 1, "ok": true}
//   {"id": 2, "op": "waitFor", "js": "() => ...", "timeout": 20000}
//   {"id": 3, "op": "click", "selector": "..."}      also: fill, press, eval, screenshot, errors, close
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const profile = mkdtempSync(join(tmpdir(), "jetdag-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
  ],
  viewport: { width: 1440, height: 900 },
  colorScheme: process.env.COLOR_SCHEME || "light",
});
const page = context.pages()[0] ?? (await context.newPage());
const errors = [];
page.on("console", (m) => {
  if (m.type() === "error") errors.push(`console: ${m.text()} (${m.location().url})`);
});
page.on("pageerror", (e) => errors.push(`page: ${e.message}`));

// A real function, not a string: Playwright evaluates a string predicate with eval, which the dashboard's
// Content-Security-Policy forbids (and the tests keep that policy on).
const fn = (js) => new Function("arg", `return (${js})(arg);`);

async function run(cmd) {
  const timeout = cmd.timeout ?? 20000;
  switch (cmd.op) {
    case "goto":
      await page.goto(cmd.url, { waitUntil: "domcontentloaded", timeout });
      return null;
    case "click":
      await page.click(cmd.selector, { timeout });
      return null;
    case "fill":
      await page.fill(cmd.selector, cmd.value, { timeout });
      return null;
    case "press":
      await page.press(cmd.selector, cmd.key, { timeout });
      return null;
    case "waitFor":
      await page.waitForFunction(fn(cmd.js), cmd.arg ?? null, { timeout, polling: 50 });
      return null;
    case "eval":
      return await page.evaluate(fn(cmd.js), cmd.arg ?? null);
    case "screenshot":
      await page.screenshot({ path: cmd.path, fullPage: Boolean(cmd.fullPage) });
      return null;
    case "errors":
      return errors.splice(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  if (cmd.op === "close") break;
  try {
    const value = await run(cmd);
    process.stdout.write(`${JSON.stringify({ id: cmd.id, ok: true, value })}\n`);
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ id: cmd.id, ok: false, error: String(e.message ?? e) })}\n`);
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });
process.exit(0); // stdin may still be open: do not wait for its end
