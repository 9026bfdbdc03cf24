// The classroom home page: my projects, the projects shared with my classes, and a
// project's history. Every data call goes through api.js to /graphql.

import {ApiError, describe, mutate, query} from './api.js';
import {isEmpty, summarize} from './diff.js';

// A Scratch 3 project with only a stage (its backdrop is one of the server's built-in
// assets, so the editor opens it as it is).
const NEW_PROJECT = {
    targets: [{
        isStage: true, name: 'Stage', variables: {}, lists: {}, broadcasts: {}, blocks: {},
        comments: {}, currentCostume: 0,
        costumes: [{
            assetId: 'cd21514d0531fdffb22204e0ec5ed84a', name: 'backdrop1',
            md5ext: 'cd21514d0531fdffb22204e0ec5ed84a.svg', dataFormat: 'svg',
            rotationCenterX: 240, rotationCenterY: 180
        }],
        sounds: [], volume: 100, layerOrder: 0, tempo: 60, videoTransparency: 50,
        videoState: 'on', textToSpeechLanguage: null
    }],
    monitors: [], extensions: [], meta: {semver: '3.0.0', vm: '0.2.0', agent: 'Atelier home page'}
};

const MINE = `query Mine($after: String) {
  viewer { id displayName role groups { id name } }
  projects(first: 50, after: $after, filter: {mine: true}) {
    pageInfo { hasNextPage endCursor }
    nodes { id title version updatedAt sharedWith { id name } remixedFrom { id title } }
  }
}`;
const SHARED = `query Shared {
  groups { id name projects(first: 30) { nodes { id title version updatedAt owner { id displayName } } } }
}`;
const HISTORY = `query History($id: ID!) {
  project(id: $id) {
    id title version
    versions(first: 50) { nodes { version title size savedAt via savedBy { displayName } } }
    conflicts(first: 20) { nodes { id baseVersion title savedAt resolvedVersion savedBy { displayName } } }
  }
}`;
const VERSIONS_CONTENT = `query Compare($id: ID!, $a: Int!, $b: Int!) {
  project(id: $id) { a: versionAt(version: $a) { version content } b: versionAt(version: $b) { version content } }
}`;
const CREATE = `mutation Create($title: String!, $content: JSON!) {
  createProject(input: {title: $title, content: $content}) { id title version }
}`;
const RENAME = `mutation Rename($id: ID!, $v: Int!, $title: String!) {
  updateProject(input: {id: $id, expectedVersion: $v, title: $title}) { id title version }
}`;
const SHARE = `mutation Share($id: ID!, $g: [ID!]!) { shareProject(input: {id: $id, groupIds: $g}) { id } }`;
const UNSHARE = `mutation Unshare($id: ID!, $g: [ID!]!) { unshareProject(input: {id: $id, groupIds: $g}) { id } }`;
const COPY = `mutation Remix($id: ID!, $title: String) { copyProject(input: {id: $id, title: $title}) { id title } }`;
const DELETE = `mutation Delete($id: ID!, $v: Int) { deleteProject(input: {id: $id, expectedVersion: $v}) }`;
const RESTORE = `mutation Restore($id: ID!, $version: Int!, $v: Int!) {
  restoreProjectVersion(input: {id: $id, version: $version, expectedVersion: $v}) { id version }
}`;
const KEEP_MINE = `mutation KeepMine($id: ID!, $c: ID!, $v: Int!) {
  resolveConflict(input: {id: $id, conflictId: $c, expectedVersion: $v}) { id version }
}`;

const state = {
    viewer: null,
    mine: [],
    groups: [],
    renaming: null, // project id whose rename form is open
    renameDraft: null, // the title typed there
    history: null, // {project, versions, conflicts, diff}
    busy: false
};

const $ = id => document.getElementById(id);

/** An element: h('p', {class: 'x', onclick: f}, 'text', child…). Text is never parsed as HTML. */
function h (tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
        else if (k === 'key') el.dataset.key = v;
        else if (v === true) el.setAttribute(k, '');
        else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
        if (c === null || c === undefined || c === false) continue;
        el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
}

const when = iso => {
    try {
        return new Date(iso).toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'short'});
    } catch (e) {
        return iso;
    }
};

function notice (text) {
    $('alert').replaceChildren();
    $('notice').replaceChildren(text ? h('p', {}, text) : '');
}

/** Shows an error in words; VERSION_CONFLICT offers a reload, UNAUTHENTICATED the sign-in. */
function fail (e) {
    console.error(e);
    $('notice').replaceChildren();
    const code = e instanceof ApiError ? e.code : 'INTERNAL';
    if (code === 'UNAUTHENTICATED') {
        state.viewer = null;
        render();
    }
    const parts = [h('p', {}, describe(e))];
    if (code === 'VERSION_CONFLICT' || code === 'NOT_FOUND') {
        parts.push(h('button', {type: 'button', class: 'secondary', key: 'reload', onclick: reload}, 'Reload'));
    }
    if (code === 'UNAVAILABLE') {
        parts.push(h('button', {type: 'button', class: 'secondary', key: 'reload', onclick: reload}, 'Try again'));
    }
    $('alert').replaceChildren(...parts);
}

/** Runs an action with the page marked busy, then re-reads and re-renders. */
async function act (fn, done) {
    if (state.busy) return;
    state.busy = true;
    try {
        const message = await fn();
        await load();
        if (state.history) await loadHistory(state.history.project.id, state.history.diff);
        render();
        notice(done ?? message);
    } catch (e) {
        render();
        fail(e);
    } finally {
        state.busy = false;
    }
}

async function load () {
    let after = null;
    const mine = [];
    let viewer = null;
    for (let page = 0; page < 20; page++) {
        const d = await query(MINE, {after});
        viewer = d.viewer;
        if (!viewer) break;
        mine.push(...d.projects.nodes);
        if (!d.projects.pageInfo.hasNextPage) break;
        after = d.projects.pageInfo.endCursor;
    }
    state.viewer = viewer;
    if (!viewer) return;
    // Newest change first.
    state.mine = mine.sort((x, y) => String(y.updatedAt).localeCompare(String(x.updatedAt)));
    state.groups = (await query(SHARED)).groups;
}

async function loadHistory (id, diff = null) {
    const d = await query(HISTORY, {id});
    if (!d.project) throw new ApiError('NOT_FOUND', 'project');
    state.history = {
        project: d.project,
        versions: d.project.versions.nodes,
        conflicts: d.project.conflicts.nodes,
        diff
    };
}

async function reload () {
    state.renaming = null;
    try {
        await load();
        if (state.history) {
            const id = state.history.project.id;
            if (state.mine.some(p => p.id === id)) await loadHistory(id, null);
            else state.history = null;
        }
        render();
        notice('Reloaded: you see the latest now.');
    } catch (e) {
        fail(e);
    }
}

// ---- rendering ----

function render () {
    const focused = document.activeElement?.dataset?.key;
    renderAccount();
    const app = $('app');
    if (!state.viewer) {
        app.replaceChildren(
            h('h1', {}, 'Atelier'),
            h('section', {class: 'panel', 'aria-labelledby': 'signin-title'},
                h('h2', {id: 'signin-title'}, 'Sign in'),
                h('p', {}, 'Sign in with your school account to see your projects and the projects shared with your classes.'),
                h('a', {class: 'button signin', href: '/auth/login?return_to=/', key: 'signin'}, 'Sign in'))
        );
    } else {
        app.replaceChildren(...[
            h('h1', {}, `${state.viewer.displayName}'s projects`),
            renderNew(),
            renderMine(),
            state.history ? renderHistory() : null,
            renderShared()
        ].filter(Boolean));
    }
    if (focused) {
        const again = document.querySelector(`[data-key="${CSS.escape(focused)}"]`);
        if (again) again.focus();
    }
}

function renderAccount () {
    const nav = $('account');
    if (!state.viewer) {
        nav.replaceChildren(h('a', {href: '/auth/login?return_to=/'}, 'Sign in'));
        return;
    }
    const role = String(state.viewer.role).toLowerCase();
    nav.replaceChildren(
        h('p', {}, `Signed in as ${state.viewer.displayName} (${role})`),
        h('button', {type: 'button', class: 'secondary', key: 'signout', onclick: signOut}, 'Sign out')
    );
}

function renderNew () {
    const input = h('input', {id: 'new-title', key: 'new-title', name: 'title', required: true, maxlength: 200, autocomplete: 'off'});
    const form = h('form', {class: 'inline', key: 'new-form'},
        h('div', {class: 'field'}, h('label', {for: 'new-title'}, 'Title of the new project'), input),
        h('button', {type: 'submit', key: 'create'}, 'Create project'));
    form.addEventListener('submit', ev => {
        ev.preventDefault();
        const title = input.value.trim();
        if (!title) return;
        act(async () => {
            const p = (await mutate(CREATE, {title, content: NEW_PROJECT})).createProject;
            return `Created “${p.title}”.`;
        });
    });
    return h('section', {class: 'panel', 'aria-labelledby': 'new-heading'},
        h('h2', {id: 'new-heading'}, 'New project'), form);
}

function renderMine () {
    const list = state.mine.length
        ? h('ul', {class: 'cards'}, state.mine.map(renderProject))
        : h('p', {}, 'You have no projects yet. Create one above.');
    return h('section', {class: 'panel', 'aria-labelledby': 'mine-heading'},
        h('h2', {id: 'mine-heading'}, 'My projects'), list);
}

function renderProject (p) {
    const groups = state.viewer.groups ?? [];
    const shared = new Set(p.sharedWith.map(g => g.id));
    const selected = state.history?.project.id === p.id;
    const meta = [`Version ${p.version}`, `changed ${when(p.updatedAt)}`];
    if (p.remixedFrom) meta.push(`remix of “${p.remixedFrom.title}”`);
    const sharing = p.sharedWith.length
        ? h('p', {class: 'meta'}, 'Shared with: ', p.sharedWith.map(g => h('span', {class: 'tag'}, g.name)))
        : h('p', {class: 'meta'}, 'Not shared');
    const actions = h('div', {class: 'actions'},
        h('a', {class: 'button', href: `/projects/${encodeURIComponent(p.id)}/editor`, key: `open-${p.id}`},
            'Open in editor', h('span', {class: 'vh'}, `: ${p.title}`)),
        h('button', {type: 'button', class: 'secondary', key: `rename-${p.id}`, 'aria-expanded': state.renaming === p.id,
            onclick: () => { state.renaming = state.renaming === p.id ? null : p.id; state.renameDraft = null; render(); focusRename(p.id); }},
        'Rename'),
        groups.map(g => shared.has(g.id)
            ? h('button', {type: 'button', class: 'secondary', key: `unshare-${p.id}-${g.id}`,
                onclick: () => act(async () => { await mutate(UNSHARE, {id: p.id, g: [g.id]}); return `“${p.title}” is no longer shared with ${g.name}.`; })},
            `Unshare from ${g.name}`)
            : h('button', {type: 'button', class: 'secondary', key: `share-${p.id}-${g.id}`,
                onclick: () => act(async () => { await mutate(SHARE, {id: p.id, g: [g.id]}); return `“${p.title}” is shared with ${g.name}.`; })},
            `Share with ${g.name}`)),
        h('button', {type: 'button', class: 'secondary', key: `remix-${p.id}`, onclick: () => remix(p)}, 'Remix'),
        h('button', {type: 'button', class: 'secondary', key: `history-${p.id}`, 'aria-expanded': selected,
            onclick: () => openHistory(p.id)}, 'History'),
        h('button', {type: 'button', class: 'danger', key: `delete-${p.id}`, onclick: () => remove(p)}, 'Delete')
    );
    return h('li', {class: selected ? 'selected' : null, 'aria-labelledby': `title-${p.id}`},
        h('h3', {id: `title-${p.id}`}, p.title),
        h('p', {class: 'meta'}, meta.join(' · ')),
        sharing,
        actions,
        state.renaming === p.id ? renderRename(p) : null);
}

function renderRename (p) {
    const id = `rename-input-${p.id}`;
    // What was typed survives a refused save (and the re-render after it).
    const input = h('input', {id, value: state.renameDraft ?? p.title, required: true, maxlength: 200, autocomplete: 'off',
        oninput: ev => { state.renameDraft = ev.target.value; }});
    const form = h('form', {class: 'inline'},
        h('div', {class: 'field'}, h('label', {for: id}, 'New title'), input),
        h('button', {type: 'submit', key: `rename-save-${p.id}`}, 'Save title'),
        h('button', {type: 'button', class: 'secondary', onclick: () => { state.renaming = null; state.renameDraft = null; render(); }}, 'Cancel'));
    form.addEventListener('submit', ev => {
        ev.preventDefault();
        const title = input.value.trim();
        if (!title) return;
        act(async () => {
            const r = (await mutate(RENAME, {id: p.id, v: p.version, title})).updateProject;
            state.renaming = null;
            state.renameDraft = null;
            return `Renamed to “${r.title}” (version ${r.version}).`;
        });
    });
    return form;
}

function focusRename (id) {
    const input = document.getElementById(`rename-input-${id}`);
    if (input) {
        input.focus();
        input.select();
    }
}

function renderShared () {
    const groups = state.groups;
    let body;
    if (!groups.length) {
        body = h('p', {}, 'You are not in any class yet.');
    } else {
        body = groups.map(g => {
            const gid = `group-${g.id}`;
            const projects = g.projects.nodes;
            return h('section', {'aria-labelledby': gid, class: 'group'},
                h('h3', {id: gid}, g.name),
                projects.length
                    ? h('ul', {class: 'cards'}, projects.map(p => h('li', {},
                        h('h4', {}, p.title),
                        h('p', {class: 'meta'}, `by ${p.owner.displayName} · version ${p.version}`),
                        h('div', {class: 'actions'},
                            h('a', {class: 'button', href: `/projects/${encodeURIComponent(p.id)}/editor`, key: `sopen-${g.id}-${p.id}`},
                                'Open in editor', h('span', {class: 'vh'}, `: ${p.title}`)),
                            h('button', {type: 'button', class: 'secondary', key: `sremix-${g.id}-${p.id}`, onclick: () => remix(p)},
                                'Remix', h('span', {class: 'vh'}, `: ${p.title}`))))))
                    : h('p', {}, `Nothing is shared with ${g.name} yet.`));
        });
    }
    return h('section', {class: 'panel', 'aria-labelledby': 'shared-heading'},
        h('h2', {id: 'shared-heading'}, 'Shared with my classes'), body);
}

function renderHistory () {
    const {project, versions, conflicts, diff} = state.history;
    const table = h('table', {},
        h('caption', {class: 'vh'}, `Versions of ${project.title}, newest first`),
        h('thead', {}, h('tr', {}, ['Version', 'Title', 'Saved', 'By', 'How', 'Size', ''].map((c, i) =>
            h('th', {scope: 'col'}, c || h('span', {class: 'vh'}, i === 6 ? 'Action' : ''))))),
        h('tbody', {}, versions.map(v => h('tr', {},
            h('td', {}, v.version),
            h('td', {}, v.title),
            h('td', {}, when(v.savedAt)),
            h('td', {}, v.savedBy?.displayName ?? '—'),
            h('td', {}, via(v.via)),
            h('td', {}, bytes(v.size)),
            h('td', {}, v.version === project.version
                ? 'current'
                : h('button', {type: 'button', class: 'secondary', key: `restore-${v.version}`,
                    onclick: () => restore(project, v.version)}, `Restore version ${v.version}`))))));
    return h('section', {class: 'panel', id: 'history', 'aria-labelledby': 'history-heading'},
        h('h2', {id: 'history-heading', tabindex: '-1'}, `History of “${project.title}”`),
        h('div', {class: 'actions'},
            h('button', {type: 'button', class: 'secondary', key: 'history-refresh', onclick: () => openHistory(project.id)}, 'Refresh history'),
            h('button', {type: 'button', class: 'secondary', key: 'history-close',
                onclick: () => { const id = project.id; state.history = null; render(); document.querySelector(`[data-key="history-${CSS.escape(id)}"]`)?.focus(); }},
            'Close history')),
        h('h3', {}, 'Versions'),
        table,
        renderCompare(project, versions, diff),
        renderConflicts(project, conflicts));
}

const via = v => ({GRAPHQL: 'web or API', EDITOR: 'editor', COPY: 'remix', IMPORT: 'import', RESTORE: 'restore'})[v] ?? v;
const bytes = n => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;

function renderCompare (project, versions, diff) {
    const options = selected => versions.map(v => h('option', {value: v.version, selected: v.version === selected}, `Version ${v.version}`));
    const newest = versions[0]?.version;
    const older = versions[1]?.version ?? newest;
    const from = h('select', {id: 'diff-from', name: 'from'}, options(diff?.from ?? older));
    const to = h('select', {id: 'diff-to', name: 'to'}, options(diff?.to ?? newest));
    const form = h('form', {class: 'inline'},
        h('div', {class: 'field'}, h('label', {for: 'diff-from'}, 'From'), from),
        h('div', {class: 'field'}, h('label', {for: 'diff-to'}, 'To'), to),
        h('button', {type: 'submit', key: 'compare'}, 'Compare'));
    form.addEventListener('submit', ev => {
        ev.preventDefault();
        compare(project.id, Number(from.value), Number(to.value));
    });
    return h('section', {'aria-labelledby': 'compare-heading'},
        h('h3', {id: 'compare-heading'}, 'Compare two versions'),
        versions.length < 2 ? h('p', {}, 'There is only one version so far.') : form,
        diff ? renderDiff(diff) : null);
}

function renderDiff (diff) {
    if (diff.missing) return h('p', {class: 'diff', id: 'diff-summary'}, diff.missing);
    const s = diff.summary;
    const names = list => list.length ? list.join(', ') : 'none';
    const media = list => list.length ? list.map(m => `${m.name} (${m.target})`).join(', ') : 'none';
    const blocks = s.blocks.byTarget.length
        ? s.blocks.byTarget.map(b => `${b.target}: ${b.added ? `+${b.added}` : ''}${b.added && b.removed ? ' ' : ''}${b.removed ? `−${b.removed}` : ''}`).join('; ')
        : 'none';
    return h('div', {class: 'diff', id: 'diff-summary', 'aria-live': 'polite'},
        h('h4', {}, `From version ${diff.from} to version ${diff.to}`),
        isEmpty(s)
            ? h('p', {}, 'No sprite, costume, sound or block was added or removed.')
            : h('dl', {},
                h('dt', {}, 'Sprites'), h('dd', {}, `added: ${names(s.sprites.added)}; removed: ${names(s.sprites.removed)}`),
                h('dt', {}, 'Costumes'), h('dd', {}, `added: ${media(s.costumes.added)}; removed: ${media(s.costumes.removed)}`),
                h('dt', {}, 'Sounds'), h('dd', {}, `added: ${media(s.sounds.added)}; removed: ${media(s.sounds.removed)}`),
                h('dt', {}, 'Blocks'), h('dd', {}, `${s.blocks.added} added, ${s.blocks.removed} removed (${blocks})`)));
}

function renderConflicts (project, conflicts) {
    return h('section', {'aria-labelledby': 'conflicts-heading'},
        h('h3', {id: 'conflicts-heading'}, 'Saves that arrived too late'),
        conflicts.length === 0
            ? h('p', {}, 'None: every save from the editor became a version.')
            : h('ul', {}, conflicts.map(c => h('li', {},
                `Saved ${when(c.savedAt)}${c.savedBy ? ` by ${c.savedBy.displayName}` : ''}, made from version ${c.baseVersion}. `,
                c.resolvedVersion
                    ? `Kept as version ${c.resolvedVersion}.`
                    : h('button', {type: 'button', key: `keep-${c.id}`, onclick: () => keepMine(project, c)}, 'Keep mine')))));
}

// ---- actions ----

async function openHistory (id) {
    try {
        await load();
        await loadHistory(id, null);
        render();
        $('history-heading')?.focus();
    } catch (e) {
        fail(e);
    }
}

async function compare (id, a, b) {
    try {
        const d = await query(VERSIONS_CONTENT, {id, a, b});
        const va = d.project?.a;
        const vb = d.project?.b;
        state.history.diff = (!va || !vb)
            ? {from: a, to: b, missing: `Version ${!va ? a : b} is no longer kept, so it cannot be compared.`}
            : {from: a, to: b, summary: summarize(va.content, vb.content)};
        render();
    } catch (e) {
        fail(e);
    }
}

function restore (project, version) {
    act(async () => {
        const r = (await mutate(RESTORE, {id: project.id, version, v: project.version})).restoreProjectVersion;
        return `Version ${version} is current again, as version ${r.version}.`;
    });
}

function keepMine (project, conflict) {
    act(async () => {
        const r = (await mutate(KEEP_MINE, {id: project.id, c: conflict.id, v: project.version})).resolveConflict;
        return `The late save is current now, as version ${r.version}.`;
    });
}

function remix (p) {
    act(async () => {
        const r = (await mutate(COPY, {id: p.id, title: `${p.title} (remix)`})).copyProject;
        return `Remixed: “${r.title}” is in your projects.`;
    });
}

async function remove (p) {
    const dialog = $('confirm');
    $('confirm-title').textContent = `Delete “${p.title}”?`;
    $('confirm-text').textContent = 'The project and its history will be gone. This cannot be undone.';
    const back = document.activeElement;
    dialog.returnValue = '';
    dialog.showModal();
    await new Promise(resolve => dialog.addEventListener('close', resolve, {once: true}));
    back?.focus?.();
    if (dialog.returnValue !== 'ok') return;
    if (state.history?.project.id === p.id) state.history = null;
    act(async () => {
        await mutate(DELETE, {id: p.id, v: p.version});
        return `Deleted “${p.title}”.`;
    });
}

async function signOut () {
    try {
        const resp = await fetch('/auth/logout', {method: 'POST', credentials: 'same-origin', headers: {'x-atelier-csrf': '1'}});
        if (!resp.ok && resp.status !== 204) throw new ApiError(resp.status === 503 ? 'UNAVAILABLE' : 'INTERNAL', `logout: ${resp.status}`);
        state.viewer = null;
        state.history = null;
        state.mine = [];
        state.groups = [];
        render();
        notice('You are signed out.');
        document.querySelector('[data-key="signin"]')?.focus();
    } catch (e) {
        fail(e);
    }
}

async function start () {
    try {
        await load();
        render();
    } catch (e) {
        state.viewer = null;
        render();
        fail(e);
    }
}

start();
