// The stale-tab scenario on Atelier's editor page (`/projects/{id}/editor`) with the
// unmodified Scratch editor in Debian's headless Chromium, for tests/it/editor_browser.rs
// (`stale_tab`). Separate from drive.mjs (its own small copies of the helpers) so that each
// scenario can change alone.
//
// Input: the JSON in $EDITOR_BROWSER:
//   {chromium, urlA, urlB, cookies, openedSprite, b: [{svg, name}, {svg, name}], a: {svg, name},
//    screenshots, timeoutMs?}
// `urlA` and `urlB` are the same project's editor page (on one process, or on two).
// 1. Tab A opens the project. 2. Tab B (another page of the same browser context: the same
// cookie) opens it, adds sprite b[0] from its SVG through "Upload Sprite", File > Save now,
// adds b[1], saves again. 3. Tab A, never reloaded, shows "changed in another tab"
// (projectChanged); it adds sprite a, File > Save now: the editor says it could not save (409
// VERSION_CONFLICT); the page shows "Your save was not applied". 4. "Keep mine": the page
// reloads on A's version. Screenshots: 01-a-loaded, 02-b-saved-once, 03-b-saved-twice,
// 04-a-changed-elsewhere, 05-a-save-refused, 06-a-refused-banner, 07-a-kept, 08-b-after.
// The last line on stdout is `result <JSON>`, or the script exits non-zero.

import {mkdirSync} from 'node:fs';
import {join} from 'node:path';
import {chromium} from 'playwright-core';

const cfg = JSON.parse(process.env.EDITOR_BROWSER);
const timeout = cfg.timeoutMs ?? 60000;
mkdirSync(cfg.screenshots, {recursive: true});

const log = (...a) => console.error('[stale-tab]', ...a);
const redact = u => u.replace(/\/scratch\/sessions\/[^/]+/, '/scratch/sessions/***')
    .replace(/([?&]token=)[^&#]*/g, '$1***');
const requests = [];
const cspViolations = [];

function watch (page, name) {
    page.on('console', m => {
        if (m.text().startsWith('CSP violation:')) cspViolations.push(`${name}: ${m.text()}`);
        if (m.type() === 'error' || m.type() === 'warning') log(`${name} console.${m.type()}:`, m.text().slice(0, 400));
    });
    page.on('pageerror', e => log(`${name} page error:`, String(e).slice(0, 400)));
    page.on('response', r => {
        const u = r.url();
        if (u.includes('/scratch/') || u.includes('/graphql')) {
            const entry = {page: name, method: r.request().method(), url: redact(u), status: r.status()};
            requests.push(entry);
            if (!u.includes('/graphql')) log(`${name}:`, entry.method, entry.url, entry.status);
        }
    });
    page.on('dialog', d => {
        log(`${name} dialog:`, d.type(), d.message());
        d.accept().catch(() => {});
    });
}

async function shot (page, file) {
    await page.screenshot({path: join(cfg.screenshots, `${file}.png`)});
    log('screenshot', join(cfg.screenshots, `${file}.png`));
}

const spriteInPane = (page, name) =>
    page.locator('[class*="sprite-selector_items-wrapper"]').getByText(name, {exact: true});

async function open (context, name, url) {
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    watch(page, name);
    await page.addInitScript(() => document.addEventListener('securitypolicyviolation', e =>
        console.error('CSP violation:', e.violatedDirective, e.blockedURI, e.sourceFile,
            e.lineNumber, JSON.stringify(e.sample))));
    await page.goto(url, {waitUntil: 'load'});
    await spriteInPane(page, cfg.openedSprite).waitFor();
    return page;
}

async function addSprite (page, {svg, name}) {
    await page.locator('button[aria-label="Choose a Sprite"][class*="main-button"]').hover();
    const [chooser] = await Promise.all([
        page.waitForEvent('filechooser'),
        page.locator('button[aria-label="Upload Sprite"]').click()
    ]);
    await chooser.setFiles(svg);
    await spriteInPane(page, name).waitFor();
}

// File > Save now; the PUT's status and body, and what the editor said.
async function saveNow (page) {
    const put = page.waitForResponse(r => r.request().method() === 'PUT' && r.url().includes('/projects/'));
    await page.locator('[aria-label="File menu"]').click();
    await page.getByText('Save now', {exact: true}).click();
    const response = await put;
    const ok = page.getByText('Project saved.', {exact: true});
    const failed = page.getByText(/could not save/i);
    await ok.or(failed).first().waitFor();
    // Closes the File menu (a click on the empty code area).
    await page.mouse.click(550, 400);
    return {status: response.status(), body: await response.json(), saved: await failed.count() === 0};
}

const banner = page => page.locator('#atelier-banner');

async function bannerState (page) {
    return banner(page).evaluate(b => b.hidden ? null : {
        state: b.dataset.state, text: b.innerText, role: b.getAttribute('role'),
        buttons: [...b.querySelectorAll('button')].filter(x => !x.hidden).map(x => x.textContent)
    });
}

const browser = await chromium.launch({executablePath: cfg.chromium, headless: true});
let exitCode = 0;
try {
    const context = await browser.newContext({viewport: {width: 1280, height: 800}});
    await context.addCookies(cfg.cookies);

    // 1. Tab A opens the project.
    const a = await open(context, 'A', cfg.urlA);
    await shot(a, '01-a-loaded');

    // 2. Tab B opens it, adds a sprite, saves; adds another, saves.
    const b = await open(context, 'B', cfg.urlB);
    await addSprite(b, cfg.b[0]);
    const b1 = await saveNow(b);
    log('B saved', JSON.stringify(b1));
    if (!b1.saved) throw new Error(`tab B's first save failed: ${JSON.stringify(b1)}`);
    await shot(b, '02-b-saved-once');
    await addSprite(b, cfg.b[1]);
    const b2 = await saveNow(b);
    log('B saved', JSON.stringify(b2));
    if (!b2.saved) throw new Error(`tab B's second save failed: ${JSON.stringify(b2)}`);
    const bSavedAt = Date.now();
    await shot(b, '03-b-saved-twice');
    // B's own saves are no news to B.
    const bBannerAfterSaves = await bannerState(b);

    // 3. Tab A, never reloaded: told of the change; then it edits and saves.
    await a.bringToFront();
    await a.locator('#atelier-banner[data-state="changed"]').waitFor();
    const changedAfterMs = Date.now() - bSavedAt;
    const changed = await bannerState(a);
    await shot(a, '04-a-changed-elsewhere');
    await addSprite(a, cfg.a);
    const aPut = await saveNow(a);
    log('A saved', JSON.stringify(aPut));
    await shot(a, '05-a-save-refused');
    await a.locator('#atelier-banner[data-state="refused"]').waitFor();
    const refused = await bannerState(a);
    await shot(a, '06-a-refused-banner');

    // 4. "Keep mine": the page reloads on the version that holds A's work.
    const reloaded = a.waitForEvent('load');
    await a.getByRole('button', {name: 'Keep mine'}).click();
    await reloaded;
    await spriteInPane(a, cfg.a.name).waitFor();
    await spriteInPane(a, cfg.openedSprite).waitFor();
    const aSprites = await a.locator('[class*="sprite-selector_items-wrapper"] [class*="sprite-selector-item_sprite-name"]').allInnerTexts();
    const keptBanner = await bannerState(a);
    await shot(a, '07-a-kept');
    // B, which saved nothing since, now hears of A's kept version.
    await b.bringToFront();
    await b.locator('#atelier-banner[data-state="changed"]').waitFor();
    const bAfter = await bannerState(b);
    await shot(b, '08-b-after');

    console.log('result ' + JSON.stringify({
        bSaves: [b1, b2], aPut, changed, changedAfterMs, refused, keptBanner, aSprites,
        bBannerAfterSaves, bAfter, cspViolations, requests
    }));
} catch (e) {
    log('FAILED:', e.stack || String(e));
    let i = 0;
    for (const p of browser.contexts().flatMap(c => c.pages())) {
        await p.screenshot({path: join(cfg.screenshots, `failure-${i++}.png`)}).catch(() => {});
    }
    exitCode = 1;
} finally {
    await browser.close();
}
process.exit(exitCode);
