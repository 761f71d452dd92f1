#!/usr/bin/env node
// Upstream OAuth 2.0 / OpenID Connect provider for tokenbox's end-to-end tests.
//
// Runs the npm package `oidc-provider` (v9) on 127.0.0.1 with confidential
// clients, its built-in development login and consent pages, PKCE (S256)
// required, refresh tokens issued only for `prompt=consent` + `offline_access`,
// refresh tokens rotated on every use (a reused one revokes the whole grant),
// and the RFC 7009 revocation endpoint (client authentication required).
//
// Clients: --client-id authenticates with HTTP Basic only (client_secret_basic);
// --post-client-id, when given, with client_id and client_secret in the form
// body only (client_secret_post). oidc-provider itself accepts either method
// from either client; a middleware holds each client to its registered method
// at the token and revocation endpoints (401 invalid_client otherwise).
//
// Usage:
//   node oidc-server.mjs --client-id ID --client-secret SECRET \
//     [--post-client-id ID --post-client-secret SECRET] \
//     --redirect-uri http://127.0.0.1:PORT/oauth/callback \
//     [--port 0] [--access-token-ttl 8]
//
// When it listens it prints exactly one line of JSON on stdout:
//   {"issuer":"http://127.0.0.1:PORT","authorization_url":".../auth",
//    "token_url":".../token","userinfo_url":".../me",
//    "revocation_url":".../token/revocation",
//    "clients":[{"client_id":"ID","token_endpoint_auth_method":"client_secret_basic"}, ...]}
// Everything else (oidc-provider's notices, the grant error log) goes to
// stderr. It runs until SIGTERM or SIGINT.
//
// Test shortcuts (the server listens on 127.0.0.1 only; they skip the login
// and consent pages, which signup-browser.mjs drives instead):
//   POST /__test/approve {"authorization_url": "...", "login": "alice"}
//     follows the authorization request as a browser with a cookie jar would,
//     completes the login and consent interaction through oidc-provider's own
//     Interaction and Grant models (what the consent page's submit does), and
//     answers {"redirect": "<redirect_uri>?code=...&state=..."}.
//   POST /__test/grant {"client_id": "...", "login": "alice"}
//     the same for a fresh authorization request of that client (PKCE, all
//     scopes, prompt=consent), then the code exchange with the client's own
//     authentication method: answers the token endpoint's status and JSON.
//   GET /__test/stats
//     what the server saw: {"token": {"<grant_type>": n}, "revocations": n,
//     "grants_revoked": n, "auth_method_refused": n}.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints some notices with console.info (stdout). Keep stdout
// for the single JSON line, so send every console output to stderr.
for (const level of ['log', 'info', 'debug']) {
  console[level] = (...args) => console.error(...args);
}

function fail(message) {
  process.stderr.write(`oidc-server: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      'post-client-id': { type: 'string' },
      'post-client-secret': { type: 'string' },
      'redirect-uri': { type: 'string' },
      'access-token-ttl': { type: 'string', default: '8' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  fail(err.message);
}

if (args.help) {
  process.stdout.write(
    'usage: node oidc-server.mjs --client-id ID --client-secret SECRET '
      + '--redirect-uri URL [--port 0] [--access-token-ttl 8]\n',
  );
  process.exit(0);
}

for (const name of ['client-id', 'client-secret', 'redirect-uri']) {
  if (!args[name]) fail(`--${name} is required`);
}
if (Boolean(args['post-client-id']) !== Boolean(args['post-client-secret'])) {
  fail('--post-client-id and --post-client-secret go together');
}
if (args['post-client-id'] === args['client-id']) fail('the two clients need different ids');

const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port: ${args.port}`);

const accessTokenTtl = Number(args['access-token-ttl']);
if (!Number.isInteger(accessTokenTtl) || accessTokenTtl < 1) {
  fail(`bad --access-token-ttl: ${args['access-token-ttl']}`);
}

try {
  // oidc-provider matches redirect_uri by exact string comparison; fail early on nonsense.
  new URL(args['redirect-uri']); // eslint-disable-line no-new
} catch {
  fail(`bad --redirect-uri: ${args['redirect-uri']}`);
}

const HOST = '127.0.0.1';

// Reason of an oidc-provider error: its invalid_grant errors all say
// "grant request is invalid"; the real reason is in error_detail or cause.
function describeError(err) {
  const parts = [];
  if (err?.error) parts.push(err.error);
  if (err?.error_description) parts.push(err.error_description);
  if (err?.error_detail) parts.push(`detail: ${err.error_detail}`);
  if (err?.cause) parts.push(`cause: ${err.cause.message ?? String(err.cause)}`);
  if (parts.length === 0) parts.push(err?.stack ?? String(err));
  return parts.join(' | ');
}

function logEvent(name, ctx, err) {
  const where = ctx ? `${ctx.method} ${ctx.path}` : '-';
  const client = ctx?.oidc?.client?.clientId ?? ctx?.oidc?.params?.client_id ?? '-';
  const line = `oidc-server: ${name} [${where} client=${client}] ${describeError(err)}`;
  process.stderr.write(`${line}\n`);
  if (name === 'server_error' && err?.stack) process.stderr.write(`${err.stack}\n`);
}

const { default: Provider } = await import('oidc-provider');

// Listen first, so that port 0 resolves to the real port before the issuer is fixed.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});
const issuer = `http://${HOST}:${server.address().port}`;

// Ephemeral signing key for ID tokens (RS256 is the default algorithm).
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'e2e-rs256', use: 'sig', alg: 'RS256' };

const clientOf = (clientId, clientSecret, method) => ({
  client_id: clientId,
  client_secret: clientSecret,
  token_endpoint_auth_method: method,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: [args['redirect-uri']],
});
const clients = [clientOf(args['client-id'], args['client-secret'], 'client_secret_basic')];
if (args['post-client-id']) {
  clients.push(clientOf(args['post-client-id'], args['post-client-secret'], 'client_secret_post'));
}
const clientById = new Map(clients.map((c) => [c.client_id, c]));

// What the server saw, for the tests (GET /__test/stats).
const stats = { token: {}, revocations: 0, grants_revoked: 0, auth_method_refused: 0 };

const configuration = {
  clients: clients.map((c) => ({ ...c })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // Any login name is accepted by the development login page; the account is that name.
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, name: sub };
      },
    };
  },
  scopes: ['openid', 'offline_access'],
  responseTypes: ['code'],
  features: {
    devInteractions: { enabled: true },
    userinfo: { enabled: true },
    revocation: { enabled: true },
  },
  // v9's default only requires PKCE for public clients (and FAPI 2.0): require it always.
  // Only S256 exists in v9.
  pkce: { required: () => true },
  // Refresh tokens only when the authorization request asked for offline_access
  // with prompt=consent (oidc-provider already drops offline_access from the
  // granted scope when prompt does not include consent).
  async issueRefreshToken(_ctx, client, source) {
    if (!client.grantTypeAllowed('refresh_token')) return false;
    if (!source.scopes.has('offline_access')) return false;
    return true;
  },
  // Always rotate; an already used refresh token revokes the whole grant.
  rotateRefreshToken: true,
  // Default is 15 s of leeway on token expiry: an 8 s access token would be
  // accepted for 23 s. No leeway, so the access token TTL is what it says.
  clockTolerance: 0,
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 24 * 3600,
  },
};

let provider;
try {
  provider = new Provider(issuer, configuration);
} catch (err) {
  server.close();
  fail(`configuration rejected: ${err.message}`);
}

for (const event of [
  'grant.error',
  'server_error',
  'authorization.error',
  'userinfo.error',
  'revocation.error',
  'introspection.error',
  'discovery.error',
]) {
  provider.on(event, (ctx, err) => logEvent(event, ctx, err));
}
provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  process.stderr.write(`oidc-server: grant.revoked [${ctx?.method} ${ctx?.path}] grant=${grantId}\n`);
});

// oidc-provider accepts client_secret_post from a client registered with
// client_secret_basic and the other way round (it treats the two as one). Hold
// each client to its registered method at the token and revocation endpoints,
// before the provider sees the request: the form body is read here and handed
// on (oidc-provider's body parser takes an already read body from req.body).
const tokenPath = provider.pathFor('token');
const revocationPath = provider.pathFor('revocation');
const FORM_LIMIT = 56 * 1024;

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false })) {
    size += chunk.length;
    if (size > FORM_LIMIT) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// The client and method a request authenticates with, as presented (not checked).
function presentedAuth(ctx, form) {
  const header = ctx.get('authorization');
  const basic = /^basic\s+(\S+)$/i.exec(header);
  if (basic) {
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const id = colon === -1 ? decoded : decoded.slice(0, colon);
    let clientId = id;
    try {
      clientId = decodeURIComponent(id.replace(/\+/g, '%20'));
    } catch {
      // oidc-provider refuses it on its own.
    }
    return { clientId, method: 'client_secret_basic' };
  }
  if (form.get('client_secret')) return { clientId: form.get('client_id'), method: 'client_secret_post' };
  return { clientId: form.get('client_id'), method: header ? 'other' : 'none' };
}

provider.use(async (ctx, next) => {
  const endpoint = ctx.path === tokenPath ? 'token' : ctx.path === revocationPath ? 'revocation' : null;
  if (ctx.method !== 'POST' || !endpoint || !ctx.is('application/x-www-form-urlencoded')) {
    await next();
    return;
  }
  let raw;
  try {
    raw = await readForm(ctx.req);
  } catch (err) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: err.message };
    return;
  }
  ctx.req.body = raw;
  const form = new URLSearchParams(raw);
  if (endpoint === 'token') {
    const grantType = form.get('grant_type') ?? '-';
    stats.token[grantType] = (stats.token[grantType] ?? 0) + 1;
  } else {
    stats.revocations += 1;
  }
  const { clientId, method } = presentedAuth(ctx, form);
  const registered = clientById.get(clientId)?.token_endpoint_auth_method;
  if (registered && method !== registered) {
    stats.auth_method_refused += 1;
    const detail = `${method} presented, the client is registered with ${registered}`;
    process.stderr.write(`oidc-server: ${endpoint}.error [${ctx.method} ${ctx.path} client=${clientId}] invalid_client | ${detail}\n`);
    ctx.status = 401;
    if (method === 'client_secret_basic') ctx.set('www-authenticate', 'Basic realm="oidc-server"');
    ctx.set('cache-control', 'no-store');
    ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
    return;
  }
  await next();
});

// --- Test shortcuts (see the header). ---

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(text);
}

// Follows an authorization request to its redirect back to the client, completing the
// login and consent interaction on the way. Returns the final Location.
async function approve(authorizationUrl, login) {
  const start = new URL(authorizationUrl);
  if (start.origin !== issuer) throw new Error('the authorization URL is not on this server');
  const jar = new Map();
  const get = async (url) => {
    const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
    const res = await fetch(url, {
      redirect: 'manual',
      headers: cookie ? { cookie } : {},
      signal: AbortSignal.timeout(10_000),
    });
    for (const line of res.headers.getSetCookie()) {
      const pair = line.split(';')[0];
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value && !/expires=thu, 01 jan 1970/i.test(line)) jar.set(name, value);
      else jar.delete(name);
    }
    await res.arrayBuffer();
    const location = res.headers.get('location');
    if (!(res.status >= 300 && res.status < 400) || !location) {
      throw new Error(`expected a redirect from ${new URL(url).pathname}, got HTTP ${res.status}`);
    }
    return new URL(location, url);
  };
  let next = await get(start.href);
  for (let round = 0; round < 3; round += 1) {
    if (next.origin !== issuer || !next.pathname.startsWith('/interaction/')) return next.href;
    const uid = next.pathname.split('/').pop();
    const interaction = await provider.Interaction.find(uid);
    if (!interaction) throw new Error('interaction not found');
    const { params } = interaction;
    const grant = interaction.grantId
      ? await provider.Grant.find(interaction.grantId)
      : new provider.Grant({ accountId: login, clientId: params.client_id });
    if (params.scope) grant.addOIDCScope(params.scope);
    const grantId = await grant.save();
    interaction.result = { login: { accountId: login }, consent: { grantId } };
    await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
    next = await get(new URL(interaction.returnTo, issuer).href);
  }
  throw new Error('the interaction did not end');
}

async function grantFor(clientId, login) {
  const client = clientById.get(clientId);
  if (!client) throw new Error('unknown client');
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(16).toString('base64url');
  const auth = new URL(provider.pathFor('authorization'), issuer);
  for (const [name, value] of Object.entries({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: client.redirect_uris[0],
    scope: 'openid offline_access',
    prompt: 'consent',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  })) auth.searchParams.set(name, value);
  const back = new URL(await approve(auth.href, login));
  const code = back.searchParams.get('code');
  if (!code) throw new Error(`no code in the redirect: ${back.searchParams.get('error') ?? '?'}`);
  const form = new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: client.redirect_uris[0],
    code_verifier: verifier,
  });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (client.token_endpoint_auth_method === 'client_secret_basic') {
    const enc = encodeURIComponent;
    headers.authorization = `Basic ${Buffer.from(`${enc(clientId)}:${enc(client.client_secret)}`).toString('base64')}`;
  } else {
    form.set('client_id', clientId);
    form.set('client_secret', client.client_secret);
  }
  const res = await fetch(new URL(tokenPath, issuer), {
    method: 'POST', headers, body: form, signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json() };
}

async function testShortcut(req, res) {
  const path = new URL(req.url, issuer).pathname;
  if (req.method === 'GET' && path === '/__test/stats') return sendJson(res, 200, stats);
  if (req.method !== 'POST' || !['/__test/approve', '/__test/grant'].includes(path)) {
    return sendJson(res, 404, { error: 'not_found' });
  }
  let input;
  try {
    input = JSON.parse(await readForm(req));
  } catch {
    return sendJson(res, 400, { error: 'a JSON body is required' });
  }
  const login = typeof input.login === 'string' && input.login ? input.login : 'alice';
  try {
    if (path === '/__test/approve') {
      return sendJson(res, 200, { redirect: await approve(String(input.authorization_url), login) });
    }
    const { status, body } = await grantFor(String(input.client_id), login);
    return sendJson(res, status, body);
  } catch (err) {
    process.stderr.write(`oidc-server: ${path} failed: ${err.message}\n`);
    return sendJson(res, 500, { error: err.message });
  }
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  const loopback = ['127.0.0.1', '::1', '::ffff:127.0.0.1'].includes(req.socket.remoteAddress);
  if (req.url.startsWith('/__test/')) {
    if (!loopback) return sendJson(res, 403, { error: 'loopback only' });
    return testShortcut(req, res);
  }
  return providerCallback(req, res);
});

const routeUrl = (name) => new URL(provider.pathFor(name), issuer).href;
process.stdout.write(`${JSON.stringify({
  issuer,
  authorization_url: routeUrl('authorization'),
  token_url: routeUrl('token'),
  userinfo_url: routeUrl('userinfo'),
  revocation_url: routeUrl('revocation'),
  clients: clients.map((c) => ({
    client_id: c.client_id,
    token_endpoint_auth_method: c.token_endpoint_auth_method,
  })),
})}\n`);

function shutdown(signal) {
  process.stderr.write(`oidc-server: ${signal}, stopping\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
