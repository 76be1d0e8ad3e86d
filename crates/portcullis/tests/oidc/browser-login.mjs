// Logs in through the gateway with a real browser: Debian's chromium, driven by
// playwright-core. Opens URL, lets the gateway redirect to the provider, fills the
// provider's login form as USER, confirms consent, and prints what the browser ends
// up showing as one JSON line: {"url": ..., "text": ..., "cookies": [names]}.
//
//   node browser-login.mjs URL USER HOST_RULES
//
// HOST_RULES maps test host names to 127.0.0.1 (chromium's --host-resolver-rules);
// the gateway's certificate comes from a test CA, so certificate errors are ignored
// for this throwaway profile only.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [url, user, hostRules] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync',
    `--host-resolver-rules=${hostRules}`,
  ],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  // The provider's login page.
  await page.waitForSelector('input[name="login"]', { timeout: 15000 });
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any-password');
  await page.click('button[type="submit"]');
  // Its consent page.
  await page.waitForSelector('button[type="submit"]', { timeout: 15000 });
  await page.click('button[type="submit"]');
  await page.waitForURL((u) => u.toString().startsWith(url.split('/').slice(0, 3).join('/')) && !u.toString().includes('/.portcullis/'), { timeout: 15000 });
  const text = await page.textContent('body');
  const cookies = (await browser.cookies()).map((c) => ({ name: c.name, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite }));
  process.stdout.write(`${JSON.stringify({ url: page.url(), text, cookies })}\n`);
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
