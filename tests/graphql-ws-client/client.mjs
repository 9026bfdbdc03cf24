// The reference client of graphql-transport-ws (npm `graphql-ws`) against Atelier's
// /graphql/ws: a query, a mutation (with an idempotency key, sent twice), a listing, an export
// followed to its end with the `jobChanged` subscription, and an invalid operation. Prints
// one JSON object with every answer; tests/it/ws.rs checks it.
//
// Environment: WS_URL (ws://host:port/graphql/ws), TOKEN (a bearer token).

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const client = createClient({
  url: process.env.WS_URL,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${process.env.TOKEN}` },
  retryAttempts: 0,
});

// The last result of an operation, once it completes; an `error` message rejects with its
// errors.
function once(payload) {
  return new Promise((resolve, reject) => {
    let result = null;
    client.subscribe(payload, {
      next: (r) => {
        result = r;
      },
      error: (e) => reject({ errors: e }),
      complete: () => resolve(result),
    });
  });
}

// Every result of a subscription, until it completes.
async function all(payload) {
  const results = [];
  for await (const r of client.iterate(payload)) {
    results.push(r);
  }
  return results;
}

const CREATE = {
  query:
    'mutation($c: JSON!) { createProject(input: {title: "from graphql-ws", content: $c}) { id title version owner { displayName } } }',
  variables: { c: { targets: [], meta: { semver: '3.0.0' } } },
  extensions: { idempotencyKey: 'graphql-ws-create-1' },
};

const out = {};
try {
  out.viewer = await once({ query: '{ viewer { id displayName role } }' });
  out.created = await once(CREATE);
  out.replayed = await once(CREATE);
  out.listing = await once({
    query: '{ projects(first: 10) { edges { node { id title owner { displayName } } } } }',
  });
  const job = await once({
    query: 'mutation($id: ID!) { exportProject(id: $id) { id status } }',
    variables: { id: out.created.data.createProject.id },
  });
  out.job = await all({
    query: 'subscription($id: ID!) { jobChanged(id: $id) { id status url } }',
    variables: { id: job.data.exportProject.id },
  });
  try {
    out.invalid = await once({ query: '{ noSuchField }' });
  } catch (e) {
    out.invalid = e;
  }
} catch (e) {
  out.failure = e instanceof Error ? `${e.stack}` : e;
} finally {
  await client.dispose();
}
console.log(JSON.stringify(out));
