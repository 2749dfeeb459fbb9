// Two JsSIP phones in headless Chromium (playwright-core driving Debian's
// chromium) register over WSS, one calls the other, both wait for inbound
// RTP in their WebRTC statistics, the caller hangs up. Settings come as one
// JSON argument; the outcome is one JSON line on stdout.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const settings = JSON.parse(process.argv[2]);
const result = { steps: [], caller: {}, callee: {} };
const deadline = Date.now() + settings.timeout_ms;

async function until(what, predicate) {
  while (Date.now() < deadline) {
    const value = await predicate();
    if (value) return value;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const profile = mkdtempSync(join(tmpdir(), 'sipcluster-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: settings.chromium,
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    // The certificate is the test CA's; media stays on loopback, where
    // WebRTC gathers no candidates unless told to.
    '--ignore-certificate-errors', '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
  ],
});
try {
  const pages = {};
  for (const role of ['callee', 'caller']) {
    const page = await context.newPage();
    page.on('console', (m) => result[role].console = [...(result[role].console || []), m.text()].slice(-30));
    await page.goto(settings.page);
    await page.evaluate((config) => window.phone.start(config), settings[role]);
    pages[role] = page;
  }
  for (const role of ['callee', 'caller']) {
    await until(`${role} registered`, () => pages[role].evaluate(
      () => window.phone.events.includes('registered') || window.phone.events.find((e) => e.startsWith('registrationFailed'))));
  }
  result.steps.push('registered');
  await pages.caller.evaluate((target) => window.phone.call(target), settings.target);
  for (const role of ['callee', 'caller']) {
    await until(`${role} confirmed`, () => pages[role].evaluate(() => window.phone.events.includes('confirmed')));
  }
  result.steps.push('confirmed');
  for (const role of ['callee', 'caller']) {
    result[role].packets = await until(`${role} inbound RTP`, async () => {
      const packets = await pages[role].evaluate(() => window.phone.inboundPackets());
      return packets >= settings.packets ? packets : 0;
    });
  }
  result.steps.push('media');
  await pages.caller.evaluate(() => window.phone.hangup());
  for (const role of ['callee', 'caller']) {
    await until(`${role} ended`, () => pages[role].evaluate(() => window.phone.events.some((e) => e.startsWith('ended'))));
  }
  result.steps.push('ended');
  for (const role of ['callee', 'caller']) {
    result[role].events = await pages[role].evaluate(() => window.phone.events);
  }
} catch (error) {
  result.error = String(error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
