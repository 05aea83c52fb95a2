// tests/console/first_show.js URL KEY: signs in to the console at URL in headless chromium and
// prints how long the run list took to show its rows after a fresh load, in ms (the median of 5
// loads; performance mark "runs-shown", set by console/runs.js when the first page is drawn).
// bench/run runlist runs it over a tenant with a million runs.
'use strict';
const puppeteer = require('puppeteer-core');

(async () => {
  const [url, key] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1360, height: 900 });
    await page.goto(`${url}/`, { waitUntil: 'load' });
    await page.waitForSelector('#key');
    await page.type('#key', key);
    await page.keyboard.press('Enter');
    await page.waitForSelector('table.runs tbody tr[data-id]');
    const times = [];
    for (let i = 0; i < 5; i++) {
      await page.reload({ waitUntil: 'load' });
      await page.waitForFunction(() => performance.getEntriesByName('runs-shown').length > 0);
      times.push(await page.evaluate(() => performance.getEntriesByName('runs-shown')[0].startTime));
    }
    times.sort((a, b) => a - b);
    process.stdout.write(`${Math.round(times[2])}\n`);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
