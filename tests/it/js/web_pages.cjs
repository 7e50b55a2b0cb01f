// The admin pages in headless Chromium (tests/it/web_admin.rs): Debian's
// chromium driven by playwright-core. Reads a JSON request (base URL, the
// admin's credentials, the stored study, a failed work item, a device to
// C-ECHO, where to put screenshots); any failed check throws (exit 1).
'use strict';
const fs = require('fs');
const path = require('path');

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { chromium } = require(request.playwright);
const BOUND_MS = 60000; // only stops a check that would hang

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: request.chromium,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const failures = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1366, height: 860 } });
    const page = await context.newPage();
    page.setDefaultTimeout(30000);
    page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 500) failures.push(`${r.status()} ${r.url()}`);
    });
    const shot = async (name) => {
      const file = path.join(request.out_dir, name);
      await page.screenshot({ path: file, fullPage: true });
      console.log(`screenshot ${file}`);
    };

    // Not logged in: the login form, then the study list.
    await page.goto(`${request.base}/`);
    check(page.url().includes('/login'), `not sent to the login form: ${page.url()}`);
    await page.fill('input[name=name]', request.admin[0]);
    await page.fill('input[name=password]', request.admin[1]);
    await Promise.all([page.waitForNavigation(), page.click('form.login button')]);
    check(!page.url().includes('/login'), `login failed: ${page.url()}`);

    // Search by patient name.
    await page.fill('input[name=PatientName]', 'TEST^PATIENT0*');
    await Promise.all([page.waitForNavigation(), page.click('form.search button')]);
    const rows = await page.locator('#studies tbody tr.study').count();
    check(rows === 1, `search found ${rows} studies`);
    const listed = await page.locator('#studies').innerText();
    check(listed.includes(request.patient_name), `the list lacks the patient: ${listed}`);
    const thumb = await page.locator('#studies img.thumb').first().getAttribute('src');
    check(thumb === `/dicom-web/studies/${request.study_uid}/thumbnail`, `thumbnail URL ${thumb}`);
    await shot('studies.png');

    // Open the study: series, instances, where it is stored, its history.
    await Promise.all([page.waitForNavigation(), page.locator('#studies tbody tr.study a').nth(1).click()]);
    check(page.url().endsWith(`/studies/${request.study_uid}`), `study URL ${page.url()}`);
    const facts = await page.locator('#facts').innerText();
    check(facts.includes(request.study_uid), 'the study UID is not shown');
    const location = await page.locator('#location').innerText();
    check(location.includes('filesystem'), `where it is stored: ${location}`);
    check((await page.locator('#series tbody tr').count()) === 2, 'two series');
    check((await page.locator('#instances tbody tr').count()) === 4, 'four instances');
    const history = await page.locator('#history').innerText();
    check(history.includes(`${request.failed_item}`) && history.includes('failed'),
      `the history lacks the failed send: ${history}`);
    await shot('study.png');

    // C-ECHO from the devices page.
    await page.goto(`${request.base}/devices`);
    const echoRow = page.locator('#devices tbody tr', { hasText: request.echo_device });
    await Promise.all([page.waitForNavigation(), echoRow.locator('button.echo').click()]);
    const echoed = await page.locator('#echo-result').innerText();
    check(echoed.includes('success'), `C-ECHO: ${echoed}`);
    await shot('devices.png');

    // Retry the failed work item: it runs again and fails again (its
    // failure count goes to 2); the table refreshes by itself.
    await page.goto(`${request.base}/work?status=`);
    const row = () => page.locator(`#queue tr[data-id="${request.failed_item}"]`);
    check((await row().getAttribute('data-status')) === 'failed', 'the item is not failed');
    const failuresBefore = (await row().locator('td').nth(4).innerText()).trim();
    await Promise.all([page.waitForNavigation(), row().locator('button.retry').click()]);
    const deadline = Date.now() + BOUND_MS;
    let seen = '';
    for (;;) {
      // No reload: the page's own refresh replaces the table.
      const status = await row().getAttribute('data-status');
      const count = (await row().locator('td').nth(4).innerText()).trim();
      seen = `${status} after ${count} failures`;
      if (status === 'failed' && count !== failuresBefore) break;
      check(Date.now() < deadline, `the retried item never failed again: ${seen}`);
      await page.waitForTimeout(500);
    }
    console.log(`retried work item ${request.failed_item}: ${seen}`);
    await shot('work.png');

    // A tablet: the filesystems page with its usage bar.
    await page.setViewportSize({ width: 768, height: 1024 });
    await page.goto(`${request.base}/filesystems`);
    check((await page.locator('#filesystems .bar .used').count()) >= 1, 'no usage bar');
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 768, `the page is wider than a tablet: ${width}px`);
    await shot('filesystems-tablet.png');
  } finally {
    await browser.close();
  }
  check(failures.length === 0, `errors while browsing:\n${failures.join('\n')}`);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
