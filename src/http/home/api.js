// Every data call of the home page: POST /graphql with the session cookie (same origin).
// Errors come back as ApiError with the server's stable code (docs/api.md, "Errors").

export class ApiError extends Error {
    constructor (code, message, extensions = {}) {
        super(message);
        this.code = code;
        this.extensions = extensions;
    }
}

function newKey () {
    if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

async function post (query, variables, key) {
    const headers = {'Content-Type': 'application/json', 'Accept': 'application/json'};
    if (key) headers['Idempotency-Key'] = key;
    let resp;
    try {
        resp = await fetch('/graphql', {
            method: 'POST',
            credentials: 'same-origin',
            headers,
            body: JSON.stringify({query, variables})
        });
    } catch (e) {
        throw new ApiError('UNAVAILABLE', 'The server could not be reached.');
    }
    let body;
    try {
        body = await resp.json();
    } catch (e) {
        const code = resp.status === 503 ? 'UNAVAILABLE' : resp.status === 401 ? 'UNAUTHENTICATED' : 'INTERNAL';
        throw new ApiError(code, `The server answered ${resp.status}.`);
    }
    const errors = Array.isArray(body) ? body.flatMap(b => b.errors ?? []) : body.errors;
    if (errors && errors.length) {
        const e = errors[0];
        throw new ApiError(e.extensions?.code ?? 'INTERNAL', e.message ?? 'error', e.extensions ?? {});
    }
    return body.data;
}

/** A query: answered once. */
export function query (text, variables = {}) {
    return post(text, variables, null);
}

/**
 * A mutation, with an Idempotency-Key: when the answer is UNAVAILABLE (the outcome is
 * unknown) it is sent again with the same key, so it is applied at most once.
 */
export async function mutate (text, variables = {}) {
    const key = newKey();
    for (let attempt = 0; ; attempt++) {
        try {
            return await post(text, variables, key);
        } catch (e) {
            if (!(e instanceof ApiError) || e.code !== 'UNAVAILABLE' || attempt >= 2) throw e;
            await sleep(400 * (attempt + 1) ** 2);
        }
    }
}

/** What to tell the person about an error, in words. */
export function describe (e) {
    const code = e instanceof ApiError ? e.code : 'INTERNAL';
    switch (code) {
    case 'VERSION_CONFLICT':
        return 'This project was changed elsewhere — reload to see the latest.';
    case 'FORBIDDEN':
        return 'You are not allowed to do that: you may look at this project, but only its owner can change it.';
    case 'NOT_FOUND':
        return 'That project (or class) is not there any more, or you can no longer see it.';
    case 'UNAUTHENTICATED':
        return 'You are signed out. Sign in again to continue.';
    case 'BAD_USER_INPUT':
        return `That was not accepted: ${e.message}`;
    case 'UNAVAILABLE':
        return 'The server is busy or cannot be reached right now. Please try again in a moment.';
    case 'PAYLOAD_TOO_LARGE':
        return 'That is larger than this server accepts.';
    case 'MISSING_ASSETS':
        return 'The project names costumes or sounds this server does not have.';
    default:
        return `Something went wrong (${code}). Please try again; if it keeps happening, tell your teacher.`;
    }
}
