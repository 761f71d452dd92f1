#!/usr/bin/env node
// Drives headless Chromium through tokenbox's OAuth signup flow, as a person would.
//
// Usage:
//   node signup-browser.mjs --url <connect-link-url> --screenshots <dir> [--login alice] [--deny]
//     [--password any-password] [--timeout 60]
//
// Steps: open the connect link, click `#connect`, sign in on the upstream
// provider's development login page (oidc-provider), confirm the consent page
// (or press its "[ Cancel ]" link with --deny), and wait for tokenbox's result
// page, whose `#result` element carries `data-status`.
//
// On success it prints one line of JSON on stdout and exits 0:
//   {"final_url": "...", "status": "<#result data-status>", "text": "<#result text>"}
// On failure it writes the reason, the current URL and the page text on stderr,
// saves <dir>/failure.png and exits 1 (2 for a usage error). The whole run is
// bounded by --timeout seconds (60 by default), failure handling included.
//
// Screenshots: connect-page.png, login-page.png, consent-page.png,
// result-page.png (or failure.png).

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const NO_RESULT_GRACE_MS = 3_000; // a loaded tokenbox page after the provider, without #result

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const log = (msg) => process.stderr.write(`signup-browser [${elapsed()}]: ${msg}\n`);

function usage(message) {
  if (message) process.stderr.write(`signup-browser: ${message}\n`);
  process.stderr.write(
    'usage: node signup-browser.mjs --url <connect-link-url> --screenshots <dir> [--login alice] [--deny]'
      + ' [--password any-password] [--timeout 60]\n',
  );
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      url: { type: 'string' },
      screenshots: { type: 'string' },
      login: { type: 'string', default: 'alice' },
      password: { type: 'string', default: 'any-password' },
      deny: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '60' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (args.help) usage();
if (!args.url) usage('--url is required');
if (!args.screenshots) usage('--screenshots is required');
const timeoutSeconds = Number(args.timeout);
if (!(timeoutSeconds >= 5 && timeoutSeconds <= 600)) usage(`bad --timeout (5..600 s): ${args.timeout}`);

const RUN_TIMEOUT_MS = timeoutSeconds * 1000; // the whole run, failure handling included
const CLEANUP_RESERVE_MS = Math.min(8_000, RUN_TIMEOUT_MS / 3); // failure screenshot, closing the browser
const STEP_TIMEOUT_MS = Math.min(20_000, RUN_TIMEOUT_MS - CLEANUP_RESERVE_MS); // one page transition

let startUrl;
try {
  startUrl = new URL(args.url);
} catch {
  usage(`bad --url: ${args.url}`);
}
if (!isLocalHost(startUrl.hostname)) usage(`--url must point at 127.0.0.1 or localhost: ${args.url}`);
if (!fs.existsSync(CHROMIUM)) {
  process.stderr.write(`signup-browser: ${CHROMIUM} not found; run scripts/e2e-setup.sh first\n`);
  process.exit(1);
}

const shotDir = path.resolve(args.screenshots);
fs.mkdirSync(shotDir, { recursive: true });

function isLocalHost(hostname) {
  return ['127.0.0.1', 'localhost', '[::1]', '::1'].includes(hostname);
}

class FlowError extends Error {}

// Hard bound: whatever happens, the process is gone after RUN_TIMEOUT_MS.
// (playwright kills the browser it launched when the process exits.)
setTimeout(() => {
  process.stderr.write(`signup-browser: FAILED: hard timeout after ${RUN_TIMEOUT_MS / 1000}s\n`);
  process.exit(1);
}, RUN_TIMEOUT_MS).unref();

const { chromium } = await import('playwright-core');

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbox-e2e-chromium-'));
let context;
let page;
let leftStartPage = false; // set once the browser went from the connect page to the provider
let lastNavigation = null; // { url, status } or { url, failure } of the last main-frame document

async function screenshot(name) {
  const file = path.join(shotDir, name);
  await page.screenshot({ path: file, fullPage: true, timeout: 5_000 });
  log(`saved ${file}`);
  return file;
}

// Which page is shown now: tokenbox's result, the provider's login or consent
// page, or the provider's error page.
async function detectState() {
  if (page.url().startsWith('chrome-error://')) return 'browser-error';
  if (await page.locator('#result').count()) return 'result';
  if (await page.locator('form input[name="prompt"][value="login"]').count()) return 'login';
  if (await page.locator('form input[name="prompt"][value="consent"]').count()) return 'consent';
  if ((await page.title().catch(() => '')) === 'oops! something went wrong') return 'provider-error';
  // Back on tokenbox after the provider, page fully loaded, but no #result.
  if (leftStartPage && new URL(page.url()).origin === startUrl.origin
    && (await page.evaluate(() => document.readyState)) === 'complete') {
    return 'tokenbox-no-result';
  }
  return null;
}

async function waitForState(what, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let noResultSince = 0;
  for (;;) {
    let state = null;
    try {
      state = await detectState();
    } catch {
      // The page navigated while it was inspected: look again.
    }
    // A page that renders #result late gets a short grace period.
    if (state === 'tokenbox-no-result') {
      noResultSince ||= Date.now();
      if (Date.now() - noResultSince < NO_RESULT_GRACE_MS) state = null;
    } else {
      noResultSince = 0;
    }
    if (state) return state;
    if (Date.now() > deadline) throw new FlowError(`timed out after ${timeout / 1000}s waiting for ${what}`);
    await page.waitForTimeout(100);
  }
}

async function flow() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1000, height: 800 },
    timeout: 20_000,
  });
  // Registered after playwright's own exit hook, which kills the browser: also
  // clean up on the hard timeout's process.exit.
  process.on('exit', () => fs.rmSync(userDataDir, { recursive: true, force: true }));
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);

  // Only loopback traffic: the provider's pages @import web fonts from the internet.
  const blocked = new Set();
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol) && !isLocalHost(url.hostname)) {
      if (!blocked.has(url.host)) {
        blocked.add(url.host);
        log(`blocked request to ${url.host}`);
      }
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });

  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (err) => log(`page error: ${err.message}`));
  page.on('response', (res) => {
    if (res.request().isNavigationRequest() && res.frame() === page.mainFrame()) {
      lastNavigation = { url: res.url(), status: res.status() };
      if (new URL(res.url()).origin !== startUrl.origin) leftStartPage = true;
    }
  });
  page.on('requestfailed', (req) => {
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
      lastNavigation = { url: req.url(), failure: req.failure()?.errorText ?? 'failed' };
    }
  });

  log(`opening ${startUrl.href}`);
  const response = await page.goto(startUrl.href, { waitUntil: 'load' });
  if (!response) throw new FlowError('no response for the connect link');
  if (!response.ok()) throw new FlowError(`connect link answered HTTP ${response.status()}`);
  await screenshot('connect-page.png');

  const connect = page.locator('form[method="post" i] #connect');
  if (!(await connect.count())) {
    throw new FlowError('connect page has no button #connect inside a <form method="post">');
  }
  log('clicking #connect');
  await connect.click();

  let sawLogin = false;
  let sawConsent = false;
  for (let step = 0; step < 6; step += 1) {
    const state = await waitForState(
      sawLogin ? 'the consent page or the result page (#result)' : 'the provider login page',
    );
    if (state === 'result') break;
    if (state === 'provider-error') {
      throw new FlowError('the provider showed its error page');
    }
    if (state === 'browser-error') {
      const nav = lastNavigation?.failure ? ` (${lastNavigation.failure} for ${lastNavigation.url})` : '';
      throw new FlowError(`the browser could not load a page${nav}`);
    }
    if (state === 'tokenbox-no-result') {
      throw new FlowError(`back on tokenbox, but the page has no #result element (HTTP ${lastNavigation?.status ?? '?'})`);
    }
    if (state === 'login') {
      if (sawLogin) throw new FlowError('the provider asked for the login a second time');
      sawLogin = true;
      await screenshot('login-page.png');
      log(`signing in as ${args.login}`);
      await page.locator('input[name="login"]').fill(args.login);
      await page.locator('input[name="password"]').fill(args.password);
      await page.locator('form:has(input[name="prompt"][value="login"]) button[type="submit"]').click();
      // Wait until the login form is gone before looking at the next page.
      await page.locator('input[name="prompt"][value="login"]').waitFor({ state: 'detached' });
      continue;
    }
    if (state === 'consent') {
      if (sawConsent) throw new FlowError('the provider asked for consent a second time');
      sawConsent = true;
      await screenshot('consent-page.png');
      if (args.deny) {
        log('denying: clicking "[ Cancel ]" on the consent page');
        await page.locator('.login-help a[href*="/abort"]').click();
      } else {
        log('confirming consent');
        await page.locator('form:has(input[name="prompt"][value="consent"]) button[type="submit"]').click();
      }
      await page.locator('input[name="prompt"][value="consent"]').waitFor({ state: 'detached' });
      continue;
    }
  }

  const result = page.locator('#result');
  if (!(await result.count())) throw new FlowError('the flow did not end on a page with #result');
  await page.waitForLoadState('load');
  const status = await result.getAttribute('data-status');
  const text = (await result.innerText()).trim();
  await screenshot('result-page.png');
  return { final_url: page.url(), status, text };
}

async function pageSummary() {
  if (!page) return { url: '(no page)', text: '' };
  const url = page.url();
  let text = '';
  try {
    text = (await page.locator('body').innerText({ timeout: 2_000 })).replace(/\s+/g, ' ').trim().slice(0, 800);
  } catch {
    // Page gone or still loading.
  }
  return { url, text };
}

async function closeBrowser() {
  if (!context) return;
  await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
}

let exitCode = 0;
let timer;
try {
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new FlowError(`flow timed out after ${Math.round((RUN_TIMEOUT_MS - CLEANUP_RESERVE_MS) / 1000)}s`)),
      RUN_TIMEOUT_MS - CLEANUP_RESERVE_MS,
    );
  });
  const running = flow();
  running.catch(() => {}); // after a timeout it fails on its own, once the browser is closed
  const result = await Promise.race([running, timeout]);
  clearTimeout(timer);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  log(`done: status=${result.status}`);
} catch (err) {
  clearTimeout(timer);
  exitCode = 1;
  const { url, text } = await pageSummary();
  const reason = err instanceof FlowError ? err.message : (err?.message ?? String(err)).split('\n')[0];
  if (!(err instanceof FlowError) && process.env.DEBUG) process.stderr.write(`${err?.stack}\n`);
  process.stderr.write(`signup-browser: FAILED: ${reason}\n`);
  process.stderr.write(`signup-browser: current URL: ${url}\n`);
  if (lastNavigation) process.stderr.write(`signup-browser: last document: ${JSON.stringify(lastNavigation)}\n`);
  if (text) process.stderr.write(`signup-browser: page text: ${text}\n`);
  if (page) {
    try {
      // A document that never finished loading blocks screenshots: stop loading first.
      await Promise.race([
        context.newCDPSession(page).then((cdp) => cdp.send('Page.stopLoading')).catch(() => {}),
        new Promise((r) => setTimeout(r, 1_000)),
      ]);
      await screenshot('failure.png');
    } catch (shotErr) {
      process.stderr.write(`signup-browser: could not save failure.png: ${shotErr.message.split('\n')[0]}\n`);
    }
  }
} finally {
  await closeBrowser();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
