#!/usr/bin/env node
// Upstream OAuth 2.0 / OpenID Connect provider for tokenbox's end-to-end tests.
//
// Runs the npm package `oidc-provider` (v9) on 127.0.0.1 with one confidential
// client, its built-in development login and consent pages, PKCE (S256)
// required, refresh tokens issued only for `prompt=consent` + `offline_access`,
// and refresh tokens rotated on every use.
//
// Usage:
//   node oidc-server.mjs --client-id ID --client-secret SECRET \
//     --redirect-uri http://127.0.0.1:PORT/oauth/callback \
//     [--port 0] [--access-token-ttl 8]
//
// When it listens it prints exactly one line of JSON on stdout:
//   {"issuer":"http://127.0.0.1:PORT","authorization_url":".../auth",
//    "token_url":".../token","userinfo_url":".../me"}
// Everything else (oidc-provider's notices, the grant error log) goes to
// stderr. It runs until SIGTERM or SIGINT.

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

const configuration = {
  clients: [
    {
      client_id: args['client-id'],
      client_secret: args['client-secret'],
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [args['redirect-uri']],
    },
  ],
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
  process.stderr.write(`oidc-server: grant.revoked [${ctx?.method} ${ctx?.path}] grant=${grantId}\n`);
});

// oidc-provider accepts client_secret_post from a client registered with
// client_secret_basic (it treats the two as one). The client is meant to use
// HTTP Basic only: reject token requests without it, before the provider sees them.
const tokenPath = provider.pathFor('token');
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === tokenPath
    && !/^basic\s/i.test(ctx.get('authorization'))) {
    const detail = 'token request without HTTP Basic client authentication (client_secret_basic required)';
    process.stderr.write(`oidc-server: grant.error [${ctx.method} ${ctx.path}] invalid_client | ${detail}\n`);
    ctx.status = 401;
    ctx.set('www-authenticate', 'Basic realm="oidc-server"');
    ctx.set('cache-control', 'no-store');
    ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
    return;
  }
  await next();
});

server.on('request', provider.callback());

const routeUrl = (name) => new URL(provider.pathFor(name), issuer).href;
process.stdout.write(`${JSON.stringify({
  issuer,
  authorization_url: routeUrl('authorization'),
  token_url: routeUrl('token'),
  userinfo_url: routeUrl('userinfo'),
})}\n`);

function shutdown(signal) {
  process.stderr.write(`oidc-server: ${signal}, stopping\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
