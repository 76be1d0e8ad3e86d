// A real OpenID provider for Portcullis's integration tests: panva/oidc-provider (the
// certified implementation) on 127.0.0.1, with its development login and consent pages.
//
//   node provider.mjs PORT KEYSET
//
// PORT 0 picks a free port. KEYSET names the signing keys ("a" or "b"), so a test can
// restart the provider with other keys to rotate them. Prints one line on stdout once
// listening: {"issuer": "http://127.0.0.1:PORT"}.
//
// Test-only control endpoints: PUT /__test/client with client metadata registers or
// replaces a client (the gateway's redirect URI contains its port, known only after it
// starts); GET /__test/signing-key returns the signing key, so adversarial tests can
// forge tokens that differ from real ones in exactly one way.
// ID_TOKEN_TTL (seconds, default 300) shortens ID tokens to exercise refresh.
//
// Accounts: any login works; "alice" is in groups admins and dev, anyone else in dev.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const port = Number(process.argv[2] || 0);
const keyset = process.argv[3] || 'a';
const clients = new Map();

// Clients come from the map above; everything else is kept in memory.
class Adapter extends MemoryAdapter {
  constructor(name) {
    super(name);
    this.modelName = name;
  }
  async find(id) {
    if (this.modelName === 'Client') return clients.get(id);
    return super.find(id);
  }
}

// A fresh key per process; the kid names the set so a test can tell which signed a token.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const kid = `${keyset}-${crypto.randomBytes(4).toString('hex')}`;
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };
const idTokenTtl = Number(process.env.ID_TOKEN_TTL || 300);

const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    adapter: Adapter,
    jwks: { keys: [signingJwk] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'api'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: `${id}@example.com`,
            email_verified: true,
            name: id,
            groups: id === 'alice' ? ['admins', 'dev'] : ['dev'],
          };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      if (!token.accountId) return undefined;
      return { email: `${token.accountId}@example.com`, groups: token.accountId === 'alice' ? ['admins', 'dev'] : ['dev'] };
    },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:portcullis:api',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api',
          audience: 'urn:portcullis:api',
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    ttl: { IdToken: idTokenTtl, AccessToken: 300, RefreshToken: 86400, Interaction: 600, Session: 86400, Grant: 86400 },
    cookies: { keys: ['portcullis-test-cookie-key'] },
  });
  provider.proxy = false;

  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'PUT' && req.url === '/__test/client') {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        const meta = JSON.parse(body);
        clients.set(meta.client_id, meta);
        res.writeHead(204).end();
      });
      return;
    }
    if (req.method === 'GET' && req.url === '/__test/signing-key') {
      // Lets adversarial tests sign tokens that differ from real ones in one claim.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kid, pem: privateKey.export({ format: 'pem', type: 'pkcs8' }) }));
      return;
    }
    callback(req, res);
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
