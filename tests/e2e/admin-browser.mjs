// Drives headless Chromium through tokenbox's /admin status page:
//   node admin-browser.mjs --base http://127.0.0.1:PORT --token ADMIN_TOKEN --screenshots DIR
// Prints one JSON line: {"first_attention": ..., "link": ..., "after_logout": ...}.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, value, i, all) => (i % 2 === 0 ? [...pairs, [value.replace(/^--/, ''), all[i + 1]]] : pairs), []),
);
const { base, token, screenshots } = args;
if (!base || !token || !screenshots) {
  console.error('usage: node admin-browser.mjs --base URL --token TOKEN --screenshots DIR');
  process.exit(2);
}
mkdirSync(screenshots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'tokenbox-admin-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const timer = setTimeout(() => { console.error('timed out'); process.exit(1); }, 60_000);
try {
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  // Without the cookie: the login form.
  await page.goto(`${base}/admin`);
  if (!page.url().endsWith('/admin/login')) throw new Error(`not redirected to login: ${page.url()}`);
  await page.screenshot({ path: join(screenshots, 'admin-login.png') });
  await page.fill('#token', token);
  await page.click('#login');
  await page.waitForSelector('#attention');
  const first = await page.locator('#attention tr.attention').first().innerText();
  await page.screenshot({ path: join(screenshots, 'admin-status.png'), fullPage: true });
  await page.locator('#attention tr.attention .new-link').first().click();
  await page.waitForLoadState();
  if (await page.locator('#link').count() === 0) {
    throw new Error(`no link on ${page.url()}: ${(await page.content()).slice(-700)}`);
  }
  const link = (await page.locator('#link').innerText()).trim();
  await page.screenshot({ path: join(screenshots, 'admin-new-link.png') });
  await page.goto(`${base}/admin`);
  await page.click('#logout');
  await page.waitForSelector('#token');
  const afterLogout = page.url();
  await page.goto(`${base}/admin`);
  const again = page.url();
  console.log(JSON.stringify({ first_attention: first, link, after_logout: afterLogout, admin_after_logout: again }));
} catch (error) {
  console.error(String(error));
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
