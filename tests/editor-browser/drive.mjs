// Drives the unmodified Scratch editor in Debian's headless Chromium (playwright-core, no
// request interception: Chromium answers CORS preflights itself), for tests/it/editor_browser.rs.
//
// Input: the JSON in $EDITOR_BROWSER:
//   {chromium, url, cookies?, svg, spriteName, openedSprite, screenshots, timeoutMs?}
// It opens `url`, waits for the project (its sprite `openedSprite` in the sprite pane), adds a
// sprite from the SVG file `svg` through "Upload Sprite" (the file chooser), File > Save now,
// waits for "Project saved."; opens `url` again and waits for `spriteName`; then File > New,
// waits for the editor to create the project on the server, File > Save now again.
// Screenshots go to `screenshots/` (01-loaded, 02-sprite-added, 03-saved, 04-reopened,
// 05-new-saved). Progress goes to stderr; the last line on stdout is `result <JSON>`
// ({savedVersion, newProjectId, newSavedVersion, cspViolations, requests}), or the script
// exits non-zero.

import {mkdirSync} from 'node:fs';
import {join} from 'node:path';
import {chromium} from 'playwright-core';

const cfg = JSON.parse(process.env.EDITOR_BROWSER);
const timeout = cfg.timeoutMs ?? 60000;
mkdirSync(cfg.screenshots, {recursive: true});

const log = (...a) => console.error('[editor-browser]', ...a);
// Tokens never go to the output: the session segment and ?token= are masked.
const redact = u => u.replace(/\/scratch\/sessions\/[^/]+/, '/scratch/sessions/***')
    .replace(/([?&]token=)[^&#]*/g, '$1***');
// Every request to the editor's wire, as the test's evidence: method, path, status.
const requests = [];
// Content-Security-Policy refusals (Atelier's page): none is expected.
const cspViolations = [];

function watch (page, name) {
    page.on('console', m => {
        if (m.text().startsWith('CSP violation:')) cspViolations.push(`${name}: ${m.text()}`);
        if (m.type() === 'error' || m.type() === 'warning') log(`${name} console.${m.type()}:`, m.text().slice(0, 400));
    });
    page.on('pageerror', e => log(`${name} page error:`, String(e).slice(0, 400)));
    page.on('requestfailed', r => log(`${name} request failed:`, r.method(), redact(r.url()), r.failure()?.errorText));
    page.on('response', r => {
        const u = r.url();
        if (u.includes('/scratch/')) {
            const entry = {page: name, method: r.request().method(), url: redact(u), status: r.status()};
            requests.push(entry);
            log(`${name}:`, entry.method, entry.url, entry.status);
        }
    });
    // "Replace contents of the current project?" and the like.
    page.on('dialog', d => {
        log(`${name} dialog:`, d.type(), d.message());
        d.accept().catch(() => {});
    });
}

async function shot (page, file) {
    await page.screenshot({path: join(cfg.screenshots, `${file}.png`)});
    log('screenshot', join(cfg.screenshots, `${file}.png`));
}

// A sprite's name in the sprite pane (the selector's items, not the stage's).
const spriteInPane = (page, name) =>
    page.locator('[class*="sprite-selector_items-wrapper"]').getByText(name, {exact: true});

async function open (context, name) {
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    watch(page, name);
    // Content-Security-Policy refusals, with what was refused (Chromium's console line omits it).
    await page.addInitScript(() => document.addEventListener('securitypolicyviolation', e =>
        console.error('CSP violation:', e.violatedDirective, e.blockedURI, e.sourceFile,
            e.lineNumber, JSON.stringify(e.sample))));
    await page.goto(cfg.url, {waitUntil: 'load'});
    return page;
}

async function fileMenu (page, item) {
    await page.locator('[aria-label="File menu"]').click();
    await page.getByText(item, {exact: true}).click();
}

async function saveNow (page) {
    await fileMenu(page, 'Save now');
    const ok = page.getByText('Project saved.', {exact: true});
    const failed = page.getByText(/could not save/i);
    await ok.or(failed).first().waitFor();
    if (await failed.count() > 0) throw new Error('the editor says: Project could not save.');
}

const browser = await chromium.launch({executablePath: cfg.chromium, headless: true});
let exitCode = 0;
try {
    const context = await browser.newContext({viewport: {width: 1280, height: 800}});
    if (cfg.cookies?.length) await context.addCookies(cfg.cookies);

    // 1. Open the project, add a sprite from the SVG file, save.
    const page = await open(context, 'first');
    await spriteInPane(page, cfg.openedSprite).waitFor();
    await shot(page, '01-loaded');
    // The sprite menu's main button opens its "more" buttons on hover.
    await page.locator('button[aria-label="Choose a Sprite"][class*="main-button"]').hover();
    const [chooser] = await Promise.all([
        page.waitForEvent('filechooser'),
        page.locator('button[aria-label="Upload Sprite"]').click()
    ]);
    await chooser.setFiles(cfg.svg);
    await spriteInPane(page, cfg.spriteName).waitFor();
    await shot(page, '02-sprite-added');
    const put = page.waitForResponse(r => r.request().method() === 'PUT' && r.url().includes('/projects/'));
    await saveNow(page);
    const putBody = await (await put).json();
    log('saved', JSON.stringify(putBody));
    await shot(page, '03-saved');
    await page.close();

    // 2. Reopen: the sprite is there.
    const again = await open(context, 'reopened');
    await spriteInPane(again, cfg.spriteName).waitFor();
    await spriteInPane(again, cfg.openedSprite).waitFor();
    await shot(again, '04-reopened');

    // 3. File > New: the editor creates the project on the server; then Save now.
    const created = again.waitForResponse(r => r.request().method() === 'POST' &&
        /\/projects\/?(\?|$)/.test(r.url()));
    await fileMenu(again, 'New');
    const createdResp = await created;
    const createdBody = await createdResp.json();
    log('created', createdResp.status(), JSON.stringify(createdBody));
    if (createdResp.status() !== 200) throw new Error(`File > New: the create answered ${createdResp.status()}`);
    await spriteInPane(again, 'Sprite1').waitFor();
    const put2 = again.waitForResponse(r => r.request().method() === 'PUT' && r.url().includes('/projects/'));
    await saveNow(again);
    const put2Body = await (await put2).json();
    log('new project saved', JSON.stringify(put2Body));
    await shot(again, '05-new-saved');

    console.log('result ' + JSON.stringify({
        savedVersion: putBody.version,
        newProjectId: createdBody['content-name'],
        newSavedVersion: put2Body.version,
        cspViolations,
        requests
    }));
} catch (e) {
    log('FAILED:', e.stack || String(e));
    for (const p of browser.contexts().flatMap(c => c.pages())) {
        await p.screenshot({path: join(cfg.screenshots, 'failure.png')}).catch(() => {});
    }
    exitCode = 1;
} finally {
    await browser.close();
}
process.exit(exitCode);
