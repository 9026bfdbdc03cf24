// Drives Atelier's classroom home page (`/`) in Debian's headless Chromium (playwright-core;
// no request interception or routing), for tests/it/home.rs.
//
// Input: the JSON in $HOME_BROWSER:
//   {chromium, base, provider, user, className, sharedTitle, axe, screenshots, timeoutMs?}
// Signs in through the page's own "Sign in" link and the test's fake OpenID Provider (which
// wants the user as `test_user` on its authorize URL), creates a project (by keyboard), opens
// it in the editor, shares it with the class, remixes it, meets a change made elsewhere
// (VERSION_CONFLICT shown in words, then Reload), renames it, compares versions (the diff
// summary), restores version 1, keeps a conflicted save ("Keep mine"), deletes the remix
// (confirmation dialog), remixes a classmate's project from "Shared with my classes",
// unshares, signs out. axe-core runs in the page at each stage: no serious or critical
// violation may be found. Screenshots go to `screenshots/`. Progress goes to stderr; the last
// line on stdout is `result <JSON>`, or the script exits non-zero.

import {mkdirSync, readFileSync} from 'node:fs';
import {join} from 'node:path';
import {chromium} from 'playwright-core';

const cfg = JSON.parse(process.env.HOME_BROWSER);
const timeout = cfg.timeoutMs ?? 30000;
mkdirSync(cfg.screenshots, {recursive: true});
const axeSource = readFileSync(cfg.axe, 'utf8');

const log = (...a) => console.error('[home-browser]', ...a);
const cspViolations = [];
const axeReport = {};
const pageErrors = [];

async function shot (page, file) {
    await page.screenshot({path: join(cfg.screenshots, `${file}.png`), fullPage: true});
    log('screenshot', file);
}

// axe-core in the page. `addScriptTag` would add an inline <script>, which the page's policy
// (script-src 'self') refuses, as it should; DevTools evaluation is not subject to it.
async function axe (page, stage) {
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) {
        await page.evaluate(axeSource);
    }
    const violations = await page.evaluate(async () => {
        const r = await window.axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
    });
    axeReport[stage] = violations;
    const bad = violations.filter(v => v.impact === 'serious' || v.impact === 'critical');
    log(`axe ${stage}: ${violations.length} violation(s), ${bad.length} serious or critical`,
        violations.length ? JSON.stringify(violations) : '');
    return bad;
}

const heading = (page, name) => page.getByRole('heading', {name, exact: true});
const card = (page, title) => page.locator('#main ul.cards > li').filter({has: page.getByRole('heading', {name: title, exact: true})});
const alertText = page => page.locator('#alert').innerText();
const noticeHas = (page, text) => page.locator('#notice').getByText(text).waitFor();

// A GraphQL call made by the page's origin, as another tab (or the editor) would.
async function elsewhere (page, query, variables) {
    const body = await page.evaluate(async ([query, variables]) => {
        const r = await fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({query, variables})});
        return r.json();
    }, [query, variables]);
    if (body.errors) throw new Error(`elsewhere: ${JSON.stringify(body.errors)}`);
    return body.data;
}

const CAT = {
    isStage: false, name: 'Cat', variables: {}, lists: {}, broadcasts: {}, comments: {},
    currentCostume: 0, volume: 100, layerOrder: 1, visible: true, x: 0, y: 0, size: 100,
    direction: 90, draggable: false, rotationStyle: 'all around',
    blocks: {
        b1: {opcode: 'event_whenflagclicked', next: 'b2', parent: null, inputs: {}, fields: {}, shadow: false, topLevel: true, x: 0, y: 0},
        b2: {opcode: 'motion_movesteps', next: null, parent: 'b1', inputs: {STEPS: [1, 'b3']}, fields: {}, shadow: false, topLevel: false},
        b3: {opcode: 'math_number', next: null, parent: 'b2', inputs: {}, fields: {NUM: ['10', null]}, shadow: true, topLevel: false}
    },
    costumes: [
        {assetId: 'bcf454acf82e4504149f7ffe07081dbc', name: 'costume1', bitmapResolution: 1,
            md5ext: 'bcf454acf82e4504149f7ffe07081dbc.svg', dataFormat: 'svg', rotationCenterX: 48, rotationCenterY: 50},
        {assetId: '0fb9be3e8397c983338cb71dc84d0b25', name: 'costume2', bitmapResolution: 1,
            md5ext: '0fb9be3e8397c983338cb71dc84d0b25.svg', dataFormat: 'svg', rotationCenterX: 46, rotationCenterY: 53}
    ],
    sounds: [{assetId: '83c36d806dc92327b9e7049a565c6bff', name: 'Meow', dataFormat: 'wav', format: '',
        rate: 22050, sampleCount: 18688, md5ext: '83c36d806dc92327b9e7049a565c6bff.wav'}]
};

const TITLE = 'Star game';
const RENAMED = 'Star game deluxe';
const browser = await chromium.launch({executablePath: cfg.chromium, headless: true});
let exitCode = 0;
const serious = [];
try {
    const context = await browser.newContext({viewport: {width: 1280, height: 900}});
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    await page.addInitScript(() => document.addEventListener('securitypolicyviolation', e =>
        console.error('CSP violation:', e.violatedDirective, e.blockedURI, e.sourceFile, e.lineNumber)));
    page.on('console', m => {
        if (m.text().startsWith('CSP violation:')) cspViolations.push(`${page.url()}: ${m.text()}`);
        if (m.type() === 'error') log('console.error:', m.text().slice(0, 300));
    });
    page.on('pageerror', e => { pageErrors.push(String(e)); log('page error:', String(e).slice(0, 300)); });
    page.on('dialog', d => d.accept().catch(() => {}));

    // 1. Signed out: the sign-in prompt.
    await page.goto(`${cfg.base}/`);
    const signIn = page.locator('#main').getByRole('link', {name: 'Sign in', exact: true});
    await signIn.waitFor();
    await shot(page, '01-signed-out');
    serious.push(...await axe(page, 'signed-out'));
    // The keyboard: Tab reaches the skip link first, and focus is visible.
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
        const el = document.activeElement;
        const st = getComputedStyle(el);
        const r = el.getBoundingClientRect();
        return {text: el.textContent, outline: st.outlineStyle, width: st.outlineWidth, onScreen: r.left >= 0 && r.top >= 0};
    });
    log('first Tab:', JSON.stringify(focus));
    if (focus.text !== 'Skip to the projects' || focus.outline === 'none' || !focus.onScreen) {
        throw new Error(`the first Tab: ${JSON.stringify(focus)}`);
    }
    await shot(page, '01b-skip-link-focused');

    // 2. Sign in through the page's link: /auth/login?return_to=/ → the provider, which needs
    // to be told who signs in (test_user), → /auth/callback → back at /.
    await signIn.click();
    await page.waitForURL(u => u.href.startsWith(cfg.provider));
    await page.goto(`${page.url()}&test_user=${encodeURIComponent(cfg.user)}`);
    await page.waitForURL(`${cfg.base}/`);
    await heading(page, 'My projects').waitFor();
    await page.getByText('Signed in as').waitFor();

    // 3. A new project, by keyboard: the labelled field, Enter.
    const title = page.getByLabel('Title of the new project');
    await title.focus();
    await page.keyboard.type(TITLE);
    await page.keyboard.press('Enter');
    await noticeHas(page, `Created “${TITLE}”.`);
    const star = card(page, TITLE);
    await star.waitFor();
    await page.keyboard.press('Tab');
    await shot(page, '02-created');
    serious.push(...await axe(page, 'signed-in'));
    const projectId = (await star.getByRole('link', {name: /Open in editor/}).getAttribute('href')).split('/')[2];
    log('project', projectId);

    // 4. Open in the editor: Atelier's editor page loads the project.
    await star.getByRole('link', {name: /Open in editor/}).click();
    await page.waitForURL(`${cfg.base}/projects/${projectId}/editor`);
    await page.locator('[aria-label="File menu"]').waitFor();
    await page.locator('[class*="stage-selector_stage-selector"]').first().waitFor();
    await shot(page, '03-editor');
    await page.goto(`${cfg.base}/`);
    await heading(page, 'My projects').waitFor();

    // 5. Share it with the class.
    await card(page, TITLE).getByRole('button', {name: `Share with ${cfg.className}`}).click();
    await noticeHas(page, `is shared with ${cfg.className}`);
    await card(page, TITLE).getByText(`Shared with: ${cfg.className}`).waitFor();

    // 6. Remix it.
    await card(page, TITLE).getByRole('button', {name: 'Remix', exact: true}).click();
    await noticeHas(page, `Remixed: “${TITLE} (remix)”`);
    const remixId = (await card(page, `${TITLE} (remix)`).getByRole('link', {name: /Open in editor/}).getAttribute('href')).split('/')[2];

    // 7. A change made elsewhere (another tab): the Cat sprite. The page still has version 1.
    const v = (await elsewhere(page, 'query($id: ID!) { project(id: $id) { version content } }', {id: projectId})).project;
    const content = v.content;
    content.targets.push(CAT);
    await elsewhere(page, 'mutation($id: ID!, $v: Int!, $c: JSON!) { updateProject(input: {id: $id, expectedVersion: $v, content: $c}) { version } }',
        {id: projectId, v: v.version, c: content});

    // 8. Renaming from the stale page: refused, said in words, Reload, rename again.
    const rename = async () => {
        await card(page, TITLE).getByRole('button', {name: 'Rename'}).click();
        const input = page.getByLabel('New title', {exact: true});
        await input.fill(RENAMED);
        await page.getByRole('button', {name: 'Save title'}).click();
    };
    await rename();
    await page.locator('#alert').getByText('This project was changed elsewhere — reload to see the latest.').waitFor();
    const conflictMessage = await alertText(page);
    await shot(page, '04-changed-elsewhere');
    serious.push(...await axe(page, 'version-conflict'));
    await page.locator('#alert').getByRole('button', {name: 'Reload'}).click();
    await noticeHas(page, 'Reloaded');
    await rename();
    await noticeHas(page, `Renamed to “${RENAMED}” (version 3).`);

    // 9. History: three versions; the diff from 1 to 3.
    await card(page, RENAMED).getByRole('button', {name: 'History'}).click();
    await heading(page, `History of “${RENAMED}”`).waitFor();
    const rows = page.locator('#history tbody tr');
    await rows.nth(2).waitFor();
    const versionsShown = await rows.count();
    await page.getByLabel('From', {exact: true}).selectOption('1');
    await page.getByLabel('To', {exact: true}).selectOption('3');
    await page.getByRole('button', {name: 'Compare'}).click();
    await page.locator('#diff-summary').getByText('From version 1 to version 3').waitFor();
    const diffText = await page.locator('#diff-summary').innerText();
    log('diff:', diffText);
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot(page, '05-history-diff');
    serious.push(...await axe(page, 'history'));

    // 10. Restore version 1: version 4.
    await page.getByRole('button', {name: 'Restore version 1'}).click();
    await noticeHas(page, 'Version 1 is current again, as version 4.');

    // 11. A conflicted save: an editing session loads version 4, another change lands (5),
    // the session's save is refused and kept; the page shows it, "Keep mine" makes it 6.
    const put = await page.evaluate(async ([id, cat]) => {
        const gql = async (query, variables) => (await fetch('/graphql', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify({query, variables})})).json();
        const host = (await gql('mutation($id: ID!) { openEditor(projectId: $id) { projectHost } }', {id})).data.openEditor.projectHost;
        const loaded = await (await fetch(`${host}/${id}`)).json();
        const now = (await gql('query($id: ID!) { project(id: $id) { version } }', {id})).data.project.version;
        await gql('mutation($id: ID!, $v: Int!) { updateProject(input: {id: $id, expectedVersion: $v, title: "Star game, tab B"}) { version } }', {id, v: now});
        cat.name = 'Late cat';
        loaded.targets.push(cat);
        const r = await fetch(`${host}/${id}`, {method: 'PUT', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(loaded)});
        return {status: r.status, body: await r.json()};
    }, [projectId, CAT]);
    log('stale save:', JSON.stringify(put));
    if (put.status !== 409 || put.body.code !== 'VERSION_CONFLICT') throw new Error(`the stale save: ${JSON.stringify(put)}`);
    await page.getByRole('button', {name: 'Refresh history'}).click();
    const keep = page.getByRole('button', {name: 'Keep mine'});
    await keep.waitFor();
    await shot(page, '06-conflicted-save');
    serious.push(...await axe(page, 'conflicted-save'));
    await keep.click();
    await noticeHas(page, 'The late save is current now, as version 6.');
    await page.getByText('Kept as version 6.').waitFor();
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot(page, '07-kept');

    // 12. Delete the remix, confirming in the dialog (Escape first: nothing is deleted).
    const dialog = page.getByRole('dialog');
    await card(page, `${TITLE} (remix)`).getByRole('button', {name: 'Delete'}).click();
    await dialog.waitFor();
    await page.keyboard.press('Escape');
    await dialog.waitFor({state: 'hidden'});
    await card(page, `${TITLE} (remix)`).waitFor();
    await card(page, `${TITLE} (remix)`).getByRole('button', {name: 'Delete'}).click();
    await dialog.getByRole('heading', {name: `Delete “${TITLE} (remix)”?`}).waitFor();
    await shot(page, '08-confirm-delete');
    serious.push(...await axe(page, 'confirm-delete'));
    await dialog.getByRole('button', {name: 'Delete'}).click();
    await noticeHas(page, `Deleted “${TITLE} (remix)”.`);
    if (await card(page, `${TITLE} (remix)`).count() !== 0) throw new Error('the remix is still listed');

    // 13. Shared with my classes: a classmate's project, remixed.
    const shared = page.locator('section.group').filter({has: page.getByRole('heading', {name: cfg.className, exact: true})});
    const classmate = shared.locator('li').filter({has: page.getByRole('heading', {name: cfg.sharedTitle, exact: true})});
    await classmate.waitFor();
    await classmate.getByRole('button', {name: /^Remix/}).click();
    await noticeHas(page, `Remixed: “${cfg.sharedTitle} (remix)”`);
    const sharedRemixId = (await card(page, `${cfg.sharedTitle} (remix)`).getByRole('link', {name: /Open in editor/}).getAttribute('href')).split('/')[2];
    await shared.scrollIntoViewIfNeeded();
    await shot(page, '09-shared-remixed');

    // 14. Unshare, then sign out.
    const current = card(page, 'Star game, tab B');
    await current.getByRole('button', {name: `Unshare from ${cfg.className}`}).click();
    await noticeHas(page, `is no longer shared with ${cfg.className}`);
    await card(page, 'Star game, tab B').getByText('Not shared').waitFor();
    // A second tab, still showing the projects when the first signs out.
    const other = await context.newPage();
    other.setDefaultTimeout(timeout);
    other.on('pageerror', e => { pageErrors.push(String(e)); log('tab 2 page error:', String(e).slice(0, 300)); });
    await other.goto(`${cfg.base}/`);
    await heading(other, 'My projects').waitFor();
    await page.getByRole('button', {name: 'Sign out'}).click();
    await noticeHas(page, 'You are signed out.');
    // The second tab's next call is refused: it says so and offers the sign-in.
    await card(other, 'Star game, tab B').getByRole('button', {name: 'Remix', exact: true}).click();
    await other.locator('#alert').getByText('You are signed out. Sign in again to continue.').waitFor();
    await other.locator('#main').getByRole('link', {name: 'Sign in', exact: true}).waitFor();
    await shot(other, '10a-signed-out-elsewhere');
    await other.close();
    await page.reload();
    await page.locator('#main').getByRole('link', {name: 'Sign in', exact: true}).waitFor();
    await shot(page, '10-signed-out-again');

    console.log('result ' + JSON.stringify({
        projectId, remixId, sharedRemixId, versionsShown, diffText, conflictMessage,
        conflictId: put.body.conflictId, cspViolations, pageErrors, axe: axeReport, serious
    }));
    if (serious.length) exitCode = 2;
} catch (e) {
    log('FAILED:', e.stack || String(e));
    for (const p of browser.contexts().flatMap(c => c.pages())) {
        await p.screenshot({path: join(cfg.screenshots, 'failure.png'), fullPage: true}).catch(() => {});
    }
    exitCode = 1;
} finally {
    await browser.close();
}
process.exit(exitCode);
