#!/usr/bin/env node
// Drives headless Chromium through tokenbox's credential form (the connect link of an
// `api_key` or `basic` connector type), as a person would.
//
// Usage:
//   E2E_WRONG=<value> E2E_RIGHT=<value> \
//   node connect-form-browser.mjs --url <connect-link-url> --screenshots <dir> --label "API key" [--timeout 60]
//
// The values to type come from the environment, never the command line (a process list shows
// arguments). Steps: open the link, find the field by its label text (it must be a password
// field), type the wrong value and submit, wait for the form again with its error message
// (`#form-error`), type the right value and submit, wait for tokenbox's result page (`#result`).
//
// On success it prints one line of JSON on stdout and exits 0:
//   {"label": ..., "field_type": ..., "error_code": ..., "error_text": ..., "field_after_error": ...,
//    "status": <#result data-status>, "text": <#result text>, "final_url": ...}
// On failure it writes the reason and the page text on stderr, saves <dir>/form-failure.png
// and exits 1 (2 for a usage error). The whole run is bounded by --timeout seconds.
//
// Screenshots: form-page.png, form-error.png, form-result.png (or form-failure.png).

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const log = (msg) => process.stderr.write(`connect-form-browser: ${msg}\n`);

function usage(message) {
  if (message) log(message);
  process.stderr.write(
    'usage: E2E_WRONG=... E2E_RIGHT=... node connect-form-browser.mjs --url <link> --screenshots <dir> --label <text> [--timeout 60]\n',
  );
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      url: { type: 'string' },
      screenshots: { type: 'string' },
      label: { type: 'string' },
      timeout: { type: 'string', default: '60' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (!args.url || !args.screenshots || !args.label) usage('--url, --screenshots and --label are required');
const wrong = process.env.E2E_WRONG;
const right = process.env.E2E_RIGHT;
if (!wrong || !right) usage('E2E_WRONG and E2E_RIGHT must be set');
const timeoutMs = Number(args.timeout) * 1000;
if (!(timeoutMs >= 5_000 && timeoutMs <= 600_000)) usage(`bad --timeout (5..600 s): ${args.timeout}`);
const start = new URL(args.url);
const isLocalHost = (host) => ['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host);
if (!isLocalHost(start.hostname)) usage(`--url must point at 127.0.0.1 or localhost: ${args.url}`);
if (!fs.existsSync(CHROMIUM)) {
  log(`${CHROMIUM} not found; run scripts/e2e-setup.sh first`);
  process.exit(1);
}
const shots = path.resolve(args.screenshots);
fs.mkdirSync(shots, { recursive: true });
const STEP_MS = Math.min(20_000, timeoutMs / 3);

// Hard bound: whatever happens, the process is gone after the timeout (playwright kills the
// browser it launched when the process exits).
setTimeout(() => {
  log(`FAILED: hard timeout after ${timeoutMs / 1000}s`);
  process.exit(1);
}, timeoutMs).unref();

const { chromium } = await import('playwright-core');
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbox-form-chromium-'));
process.on('exit', () => fs.rmSync(profile, { recursive: true, force: true }));

class FlowError extends Error {}
let context;
let page;

async function shot(name) {
  await page.screenshot({ path: path.join(shots, name), fullPage: true, timeout: 5_000 });
  log(`saved ${path.join(shots, name)}`);
}

async function submitAndWait(selector) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load', timeout: STEP_MS }),
    page.locator('form#credential-form #connect').click(),
  ]);
  await page.locator(selector).first().waitFor({ timeout: STEP_MS });
}

async function flow() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1000, height: 800 },
    timeout: STEP_MS,
  });
  context.setDefaultTimeout(STEP_MS);
  // Only loopback traffic.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    return isLocalHost(url.hostname) ? route.continue() : route.abort('blockedbyclient');
  });
  page = context.pages()[0] ?? (await context.newPage());

  log(`opening ${start.origin}/connect/...`);
  const response = await page.goto(start.href, { waitUntil: 'load' });
  if (!response || !response.ok()) throw new FlowError(`the link answered HTTP ${response?.status()}`);
  await shot('form-page.png');

  // The field, found as a person finds it: by its label.
  const field = page.getByLabel(args.label, { exact: true });
  if ((await field.count()) !== 1) throw new FlowError(`no single field labelled "${args.label}"`);
  const fieldType = await field.getAttribute('type');

  log('typing the wrong value');
  await field.fill(wrong);
  await submitAndWait('#form-error');
  const error = page.locator('#form-error');
  const errorCode = await error.getAttribute('data-error');
  const errorText = (await error.innerText()).trim();
  const fieldAfterError = await page.getByLabel(args.label, { exact: true }).inputValue();
  const html = await page.content();
  if (html.includes(wrong)) throw new FlowError('the page echoes the typed value');
  await shot('form-error.png');

  log('typing the right value');
  await page.getByLabel(args.label, { exact: true }).fill(right);
  await submitAndWait('#result');
  const result = page.locator('#result');
  const status = await result.getAttribute('data-status');
  const text = (await result.innerText()).trim();
  await shot('form-result.png');
  return {
    label: args.label,
    field_type: fieldType,
    error_code: errorCode,
    error_text: errorText,
    field_after_error: fieldAfterError,
    status,
    text,
    final_url: page.url().replace(/\/connect\/[^/]+/, '/connect/<secret>'),
  };
}

let exitCode = 0;
try {
  const result = await flow();
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (err) {
  exitCode = 1;
  log(`FAILED: ${(err?.message ?? String(err)).split('\n')[0]}`);
  if (page) {
    try {
      log(`page text: ${(await page.locator('body').innerText({ timeout: 2_000 })).replace(/\s+/g, ' ').slice(0, 600)}`);
      await shot('form-failure.png');
    } catch {
      // The page is gone.
    }
  }
} finally {
  if (context) await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
}
process.exit(exitCode);
