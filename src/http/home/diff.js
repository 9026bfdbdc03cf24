// The summary of what changed between two versions of a Scratch 3 project: sprites (targets
// other than the stage, by name), costumes and sounds (by name and assetId, within their
// target), blocks (counted per target). Computed here from the two versions' content.

function targets (content) {
    const list = content && Array.isArray(content.targets) ? content.targets : [];
    const out = new Map();
    for (const t of list) {
        if (t && typeof t === 'object') out.set(String(t.name ?? ''), t);
    }
    return out;
}

// Each costume/sound of a target as "name\u0000assetId", counted (a multiset).
function media (target, kind) {
    const counts = new Map();
    const list = target && Array.isArray(target[kind]) ? target[kind] : [];
    for (const m of list) {
        if (!m || typeof m !== 'object') continue;
        const key = `${m.name ?? ''}\u0000${m.assetId ?? ''}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    return counts;
}

function blockCount (target) {
    const b = target && target.blocks;
    return b && typeof b === 'object' ? Object.keys(b).length : 0;
}

function label (name, target) {
    return target?.isStage ? 'the Stage' : name;
}

/**
 * {sprites: {added, removed}, costumes: {added, removed}, sounds: {added, removed},
 *  blocks: {added, removed, byTarget}}; costumes and sounds as [{target, name}], blocks
 *  per target as [{target, added, removed}].
 */
export function summarize (before, after) {
    const a = targets(before);
    const b = targets(after);
    const names = [...new Set([...a.keys(), ...b.keys()])];
    const out = {
        sprites: {added: [], removed: []},
        costumes: {added: [], removed: []},
        sounds: {added: [], removed: []},
        blocks: {added: 0, removed: 0, byTarget: []}
    };
    for (const name of names) {
        const ta = a.get(name);
        const tb = b.get(name);
        const shown = label(name, tb ?? ta);
        if (!ta && tb && !tb.isStage) out.sprites.added.push(name);
        if (ta && !tb && !ta.isStage) out.sprites.removed.push(name);
        for (const kind of ['costumes', 'sounds']) {
            const ma = media(ta, kind);
            const mb = media(tb, kind);
            for (const [key, n] of mb) {
                for (let i = ma.get(key) ?? 0; i < n; i++) out[kind].added.push({target: shown, name: key.split('\u0000')[0]});
            }
            for (const [key, n] of ma) {
                for (let i = mb.get(key) ?? 0; i < n; i++) out[kind].removed.push({target: shown, name: key.split('\u0000')[0]});
            }
        }
        const ca = blockCount(ta);
        const cb = blockCount(tb);
        if (ca !== cb) {
            const added = Math.max(0, cb - ca);
            const removed = Math.max(0, ca - cb);
            out.blocks.added += added;
            out.blocks.removed += removed;
            out.blocks.byTarget.push({target: shown, added, removed});
        }
    }
    return out;
}

/** Whether nothing the summary counts changed. */
export function isEmpty (s) {
    return !s.sprites.added.length && !s.sprites.removed.length &&
        !s.costumes.added.length && !s.costumes.removed.length &&
        !s.sounds.added.length && !s.sounds.removed.length &&
        !s.blocks.added && !s.blocks.removed;
}
