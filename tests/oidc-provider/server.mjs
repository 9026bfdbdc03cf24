// A real OpenID Provider (panva's certified `oidc-provider`) for Atelier's end-to-end sign-in
// test, tests/it/oidc_e2e.rs. Not for production: its users sign in with any password
// through the package's built-in development login and consent pages.
//
//   node server.mjs
//
// Listens on 127.0.0.1 (port OP_PORT, default 0: any free port) and prints
// `issuer <url>` once listening. Atelier's callback URL is only known once Atelier runs, and
// Atelier needs the issuer to start: so the provider is configured from the first line read on
// stdin (or OP_REDIRECT_URI when set), then prints `ready`. Later lines on stdin change what
// the provider says of a user: `account <subject> <json>` (answered with `ok`).
//
// Environment:
//   OP_CLIENT_ID, OP_CLIENT_SECRET   the one client (confidential, client_secret_basic)
//   OP_ACCOUNTS       JSON: { "<subject>": { "name", "email", "groups": [...] } }
//   OP_ACCESS_TOKEN_TTL  seconds an access token lives (default 3600)
//   OP_CONFORM        "false" puts every granted claim in the ID token as well (default:
//                     the ID token of a code flow carries `sub` only; the rest is at userinfo)
//   OP_REFRESH        "always": a refresh token for every code exchange (as many providers
//                     do); default: only when `offline_access` was granted, which
//                     OpenID Connect Core allows only for a request with `prompt=consent`

import http from 'node:http';
import readline from 'node:readline';

import Provider from 'oidc-provider';

const env = process.env;
const accounts = JSON.parse(env.OP_ACCOUNTS || '{}');

const server = http.createServer((req, res) => {
  if (!handler) {
    res.writeHead(503).end('not configured yet');
    return;
  }
  handler(req, res);
});
let handler;

server.listen(Number(env.OP_PORT || 0), '127.0.0.1', async () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  console.log(`issuer ${issuer}`);
  const redirectUri = env.OP_REDIRECT_URI || (await nextLine());
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: env.OP_CLIENT_ID || 'atelier',
        client_secret: env.OP_CLIENT_SECRET || 'atelier-secret',
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    // Every client must use PKCE, with S256.
    pkce: { methods: ['S256'], required: () => true },
    claims: {
      openid: ['sub'],
      profile: ['name'],
      email: ['email', 'email_verified'],
      // A scope of its own releases the groups claim, as Keycloak, Authentik and others do.
      groups: ['groups'],
    },
    conformIdTokenClaims: env.OP_CONFORM !== 'false',
    ...(env.OP_REFRESH === 'always'
      ? { issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token') }
      : {}),
    // Every refresh consumes its refresh token and issues a new one; using a consumed one
    // again revokes the whole grant (the strictest policy; the default rotates only some).
    rotateRefreshToken: true,
    ttl: {
      AccessToken: Number(env.OP_ACCESS_TOKEN_TTL || 3600),
    },
    // The development login and consent pages (the default, stated so the test's reliance is
    // visible): any login, any password.
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['atelier-e2e-test-cookie-key'] },
    async findAccount(_ctx, sub) {
      const account = accounts[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            name: account.name,
            email: account.email,
            email_verified: true,
            groups: account.groups ?? [],
          };
        },
      };
    },
  });
  // Show why a request was refused (the test prints this output when it fails).
  for (const event of ['server_error', 'grant.error', 'authorization.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => console.error(`${event}: ${err} ${err.error_description ?? ''}`));
  }
  handler = provider.callback();
  console.log('ready');
  for (;;) {
    const [command, sub, ...json] = (await nextLine()).split(' ');
    if (command === 'account') {
      accounts[sub] = JSON.parse(json.join(' '));
      console.log('ok');
    } else {
      console.error(`unknown command ${command}`);
    }
  }
});

// stdin, line by line. The test kills this process; stdin closing (the test itself died)
// ends it too.
const lines = [];
const waiting = [];
readline.createInterface({ input: process.stdin })
  .on('line', (line) => (waiting.length ? waiting.shift()(line.trim()) : lines.push(line.trim())))
  .on('close', () => process.exit(0));
function nextLine() {
  return lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve));
}

