// Drives the OHIF viewer in Debian's headless Chromium through
// playwright-core (resolved through NODE_PATH: the test's npm cache), for
// tests/it/ohif.rs. Prints one JSON line:
//
//   {"list_ok": bool, "list_text": str, "viewport_colours": int,
//    "error_panel": str|null, "dicomweb_failures": [str], "dicomweb_requests": [str],
//    "viewer_failures": [str],
//    "screenshots": [path], "console_errors": [str], "stage": str}
//
//   node ohif_check.cjs VIEWER_URL DICOMWEB_ROOT STUDY_UID EXPECTED_TEXT SHOT_DIR
//
// The study list must show EXPECTED_TEXT (from our patient name); the
// study then opens (/viewer?StudyInstanceUIDs=) and its viewport canvas
// must hold more than one colour. Every response OHIF got from
// DICOMWEB_ROOT is recorded; those with a status of 400 or more (and
// requests that failed outright) are listed, and so are those of the
// viewer's own files (under VIEWER_URL). Every wait is bounded.

const { chromium } = require('playwright-core');
const path = require('path');

const [viewer, dicomweb, studyUid, expected, shots] = process.argv.slice(2);
const result = {
  list_ok: false,
  list_text: '',
  viewport_colours: 0,
  error_panel: null,
  dicomweb_failures: [],
  dicomweb_requests: [],
  viewer_failures: [],
  screenshots: [],
  console_errors: [],
  stage: 'launch',
};

// The colours of the viewport's canvas (at most 1000 counted).
function canvasColours() {
  const canvases = Array.from(document.querySelectorAll('canvas.cornerstone-canvas, [data-viewport-uid] canvas'));
  let best = 0;
  for (const canvas of canvases) {
    if (!canvas.width || !canvas.height) continue;
    let data;
    try {
      const ctx = canvas.getContext('2d');
      if (!ctx) continue;
      data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    } catch (e) {
      continue;
    }
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 1000; i += 4 * 7) {
      seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    best = Math.max(best, seen.size);
  }
  return best;
}

// The text of an error panel OHIF shows, if any.
function errorPanel() {
  const text = document.body ? document.body.innerText : '';
  for (const marker of ['Something went wrong', 'Error loading', 'Failed to load', 'An error occurred']) {
    if (text.includes(marker)) return text.slice(Math.max(0, text.indexOf(marker) - 200), text.indexOf(marker) + 400);
  }
  return null;
}

async function shot(page, name) {
  const file = path.join(shots, name);
  await page.screenshot({ path: file, fullPage: false });
  result.screenshots.push(file);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'],
    timeout: 60000,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('response', response => {
      const url = response.url();
      if (url.startsWith(dicomweb)) {
        const entry = `${response.status()} ${response.request().method()} ${url.slice(dicomweb.length)}`;
        if (result.dicomweb_requests.length < 200) result.dicomweb_requests.push(entry);
        if (response.status() >= 400) result.dicomweb_failures.push(entry);
      } else if (url.startsWith(viewer) && response.status() >= 400 && result.viewer_failures.length < 50) {
        result.viewer_failures.push(`${response.status()} ${url.slice(viewer.length)}`);
      }
    });
    page.on('requestfailed', request => {
      const url = request.url();
      if (url.startsWith(dicomweb)) {
        result.dicomweb_failures.push(`failed ${request.method()} ${url.slice(dicomweb.length)}: ${request.failure() && request.failure().errorText}`);
      } else if (url.startsWith(viewer) && result.viewer_failures.length < 50) {
        result.viewer_failures.push(`failed ${url.slice(viewer.length)}: ${request.failure() && request.failure().errorText}`);
      }
    });
    page.on('console', message => {
      if (message.type() === 'error' && result.console_errors.length < 50) {
        result.console_errors.push(message.text().slice(0, 300));
      }
    });

    result.stage = 'study list';
    await page.goto(viewer + '/', { waitUntil: 'domcontentloaded', timeout: 60000 });
    await page.waitForFunction(text => document.body && document.body.innerText.includes(text), expected, {
      timeout: 60000,
      polling: 250,
    });
    result.list_ok = true;
    result.list_text = (await page.evaluate(() => document.body.innerText)).slice(0, 2000);
    await shot(page, 'ohif-study-list.png');

    result.stage = 'viewer';
    await page.goto(`${viewer}/viewer?StudyInstanceUIDs=${studyUid}`, {
      waitUntil: 'domcontentloaded',
      timeout: 60000,
    });
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      result.viewport_colours = await page.evaluate(canvasColours);
      result.error_panel = await page.evaluate(errorPanel);
      if (result.viewport_colours > 1 || result.error_panel) break;
      await page.waitForTimeout(500);
    }
    // Let the thumbnails and remaining requests settle before the verdict.
    await page.waitForTimeout(2000);
    result.error_panel = result.error_panel || (await page.evaluate(errorPanel));
    await shot(page, 'ohif-viewer.png');
    result.stage = 'done';
  } catch (error) {
    result.error = String(error).slice(0, 1000);
    try {
      const page = browser.contexts()[0].pages()[0];
      result.page_text = (await page.evaluate(() => document.body.innerText)).slice(0, 3000);
      await shot(page, `ohif-failed-at-${result.stage.replace(/ /g, '-')}.png`);
    } catch (e) {
      // No page to show.
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();
