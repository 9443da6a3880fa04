/**
 * Authentication and authorization against the real PostgreSQL: the identity × access-kind matrix, every kind of
 * bad token, required claims, Basic service accounts, in-band sign-in and refresh, expiry, a host `authorize` rule,
 * and no token in any log line of any route.
 */
import t from 'tap'
import { Writable } from 'node:stream'
import { startApp } from '../../helpers/app.js'
import { standaloneAuthenticator } from '../../helpers/authenticator.js'
import { TestClient } from '../../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { now, signHs256, unsigned } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { hashPassword } from '../../../lib/auth/passwords.js'
import { WireError } from '../../../lib/errors.js'
import Fastify from 'fastify'
import changefeed, { redactedNotFound, requestLogSerializer } from '../../../lib/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const ISSUER = 'https://clerk.ballr.test'
const AUDIENCE = 'ballr-web'
const claims = (sub: string, roles: string[] = ['Member'], extra: object = {}): object =>
  ({ sub, iss: ISSUER, aud: AUDIENCE, iat: now(), exp: now() + 600, metadata: { role: roles }, ...extra })
const token = (sub: string, roles?: string[], extra?: object): string => signHs256(claims(sub, roles, extra), SECRET)

const url = await freshDatabase(t, 'auth')
const sql = await sqlClient(t, url)
for (const table of ['mt_doc_team', 'mt_doc_memberfeed', 'mt_doc_user', 'mt_doc_usersettings', 'mt_doc_serviceaccount']) await sql.query(martenTableSql(table))
await sql.query('INSERT INTO mt_doc_usersettings (id, data) VALUES (\'us-1\', \'{"userId":"user-1","theme":"dark"}\')')

const importerPassword = 'correct horse battery staple'
const logLines: string[] = []
const logStream = new Writable({ write (chunk, _enc, done) { logLines.push(chunk.toString()); done() } })

const { app, url: wsUrl } = await startApp(t, {
  databases: [{ name: 'foundry', url }],
  entities: {
    Team: { access: 'public' },
    MemberFeed: { access: 'authenticated' },
    User: { access: 'owner' },
    UserSettings: { access: 'owner', ownerPath: ['userId'] },
    ServiceAccount: { access: 'admin' }
  },
  auth: {
    anonymous: true,
    jwt: { secret: SECRET, issuer: ISSUER, audience: AUDIENCE, rolesClaim: 'metadata.role' },
    basic: { accounts: [{ username: 'importer', passwordHash: await hashPassword(importerPassword), roles: ['Service'] }] },
    adminRoles: ['Admin']
  },
  // mounted, the plugin adds them only when told: the redaction test below reads their logs
  telemetry: { healthPath: '/health', statsPath: '/changefeed/stats' },
  authorize: ({ entityId }) => entityId !== 'blocked'
}, { logger: { level: 'info', stream: logStream } })

const basicHeader = (user: string, password: string): Record<string, string> =>
  ({ authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64') })

type Who = 'anonymous' | 'member' | 'owner' | 'admin' | 'service'
async function connectAs (t: { teardown(fn: () => unknown): void }, who: Who): Promise<TestClient> {
  const client = who === 'anonymous'
    ? await TestClient.open(wsUrl)
    : who === 'service'
      ? await TestClient.open(wsUrl, { headers: basicHeader('importer', importerPassword) })
      : await TestClient.open(`${wsUrl}?token=${token(who === 'owner' ? 'user-1' : who === 'admin' ? 'admin-7' : 'user-2', who === 'admin' ? ['Admin'] : ['Member'])}`)
  t.teardown(() => client.close())
  return client
}

const OK = 'subscribed'
const matrix: Record<string, [string, Record<Who, string>]> = {
  public: ['Team:team-1', { anonymous: OK, member: OK, owner: OK, admin: OK, service: OK }],
  authenticated: ['MemberFeed:news', { anonymous: WireError.unauthenticated, member: OK, owner: OK, admin: OK, service: OK }],
  'owner (id)': ['User:user-1', { anonymous: WireError.unauthenticated, member: WireError.forbidden, owner: OK, admin: OK, service: WireError.forbidden }],
  'owner (ownerPath)': ['UserSettings:us-1', { anonymous: WireError.unauthenticated, member: WireError.forbidden, owner: OK, admin: OK, service: WireError.forbidden }],
  admin: ['ServiceAccount:svc-1', { anonymous: WireError.unauthenticated, member: WireError.forbidden, owner: WireError.forbidden, admin: OK, service: WireError.forbidden }]
}

t.test('who may watch what: identity × access kind', async (t) => {
  for (const who of ['anonymous', 'member', 'owner', 'admin', 'service'] as Who[]) {
    const ws = await connectAs(t, who)
    for (const [kind, [subscription, expected]] of Object.entries(matrix)) {
      const [entityType, entityId] = subscription.split(':')
      const reply = await ws.subscribe(entityType, entityId)
      const outcome = reply.type === 'subscribed' ? OK : reply.data.code
      t.equal(outcome, expected[who], `${who} → ${kind} type`)
    }
    t.equal(ws.ws.readyState, 1, `${who}: denials leave the socket open`)
  }
})

t.test('owner checks read the document with the id as a parameter, not as SQL', async (t) => {
  const ws = await connectAs(t, 'owner')
  t.match(await ws.subscribe('UserSettings', "us-1' OR '1'='1"), { data: { code: WireError.forbidden } })
  t.match(await ws.subscribe('UserSettings', 'missing'), { data: { code: WireError.forbidden } }, 'no document, no owner')
})

t.test('a host authorize rule runs after the access kind', async (t) => {
  const ws = await connectAs(t, 'member')
  t.match(await ws.subscribe('Team', 'blocked'), { type: 'subscription_error', data: { code: WireError.forbidden } })
  t.equal((await ws.subscribe('Team', 'open')).type, OK)
})

const badTokens: Record<string, string> = {
  expired: token('user-1', ['Member'], { exp: now() - 60 }),
  'not yet valid': token('user-1', ['Member'], { nbf: now() + 3600 }),
  'bad signature': signHs256(claims('user-1'), SECRET + '-other'),
  'wrong issuer': token('user-1', ['Member'], { iss: 'https://evil.test' }),
  'wrong audience': token('user-1', ['Member'], { aud: 'other-app' }),
  'alg none': unsigned(claims('user-1', ['Admin'])),
  'no user id': signHs256({ iss: ISSUER, aud: AUDIENCE, exp: now() + 60 }, SECRET),
  garbage: 'not.a.jwt'
}

t.test('every bad token closes the socket with 4401, in the query and in the header', async (t) => {
  for (const [what, bad] of Object.entries(badTokens)) {
    const viaQuery = await TestClient.open(`${wsUrl}?token=${encodeURIComponent(bad)}`)
    t.equal((await viaQuery.closed).code, 4401, `${what} (?token=)`)
    const viaHeader = await TestClient.open(wsUrl, { headers: { authorization: `Bearer ${bad}` } })
    t.equal((await viaHeader.closed).code, 4401, `${what} (Authorization: Bearer)`)
  }
  const ok = await connectAs(t, 'member')
  t.equal((await ok.subscribe('MemberFeed', 'after')).type, OK, 'a good token still works')
})

t.test('Basic credentials: wrong password and unknown user close with 4401', async (t) => {
  const wrong = await TestClient.open(wsUrl, { headers: basicHeader('importer', 'guess') })
  t.equal((await wrong.closed).code, 4401)
  const unknown = await TestClient.open(wsUrl, { headers: basicHeader('nobody', importerPassword) })
  t.equal((await unknown.closed).code, 4401)
  const malformed = await TestClient.open(wsUrl, { headers: { authorization: 'Basic !!!' } })
  t.equal((await malformed.closed).code, 4401)
})

t.test('in-band sign-in and refresh', async (t) => {
  const ws = await connectAs(t, 'anonymous')
  t.match(await ws.subscribe('User', 'user-1'), { data: { code: WireError.unauthenticated } })
  ws.send({ type: 'auth', id: 'a1', data: { token: token('user-1') } })
  t.match(await ws.next((m) => m.id === 'a1'), { type: 'authenticated', data: { userId: 'user-1', roles: ['Member'] } })
  t.equal((await ws.subscribe('User', 'user-1', 's2')).type, OK, 'signed in without a token in the URL')

  ws.send({ type: 'auth', id: 'a2', data: { token: badTokens.expired } })
  t.match(await ws.next((m) => m.id === 'a2'), { type: 'error', data: { code: WireError.unauthenticated } })
  ws.send({ type: 'auth', id: 'a3', data: { token: token('user-2') } })
  t.match(await ws.next((m) => m.id === 'a3'), { type: 'error', data: { code: WireError.forbidden } }, 'a token for another user is refused')
  t.equal(ws.ws.readyState, 1, 'refusals leave the socket open with its identity')
})

t.test('a refreshed token with fewer rights drops what it no longer allows', async (t) => {
  const ws = await TestClient.open(`${wsUrl}?token=${token('admin-8', ['Admin'])}`)
  t.teardown(() => ws.close())
  t.equal((await ws.subscribe('ServiceAccount', 'svc-1')).type, OK)
  t.equal((await ws.subscribe('Team', 'team-1')).type, OK)
  ws.send({ type: 'auth', id: 'down', data: { token: token('admin-8', ['Member']) } })
  t.match(await ws.next((m) => m.type === 'subscription_error'), { data: { entityType: 'ServiceAccount', entityId: 'svc-1', code: WireError.forbidden } })
  t.equal((await ws.next((m) => m.id === 'down')).type, 'authenticated')
  await app.changefeed.publish({ entityType: 'ServiceAccount', entityId: 'svc-1', changeType: 'updated' })
  await app.changefeed.publish({ entityType: 'Team', entityId: 'team-1', changeType: 'updated' })
  await ws.next((m) => m.type === 'notification' && m.data.entityType === 'Team')
  t.same(ws.messages.filter((m) => m.type === 'notification'), [], 'no ServiceAccount notification after the downgrade')
})

t.test('an expiring token closes the socket with 4401 unless refreshed in-band', async (t) => {
  // one token for both sockets (a JWT's exp may have a fraction), valid long enough to connect on a busy machine:
  // both are due to close at the same instant
  const expiresAt = Date.now() + 1500
  const short = token('user-1', ['Member'], { exp: expiresAt / 1000 })
  const lapsing = await TestClient.open(`${wsUrl}?token=${short}`)
  const refreshed = await TestClient.open(`${wsUrl}?token=${short}`)
  t.teardown(() => refreshed.close())
  refreshed.send({ type: 'auth', id: 'r', data: { token: token('user-1') } })
  t.equal((await refreshed.next((m) => m.id === 'r')).type, 'authenticated')
  t.equal((await lapsing.closed).code, 4401, 'the unrefreshed socket closes at expiry')
  // once the clock is past the expiry, the server's expiry timer of the refreshed socket, had the refresh not
  // replaced it, runs before the server reads the next frame: a ping answered then comes from a socket it kept
  t.ok(await until(() => Date.now() > expiresAt))
  refreshed.send({ type: 'ping' })
  t.same(await refreshed.next((m) => m.type === 'pong'), { type: 'pong' })
  t.equal(refreshed.ws.readyState, 1, 'the refreshed one stays')
})

t.test('the token never appears in a log line', async (t) => {
  const secretLooking = token('user-1', ['Member'], { jti: 'LOG-CANARY-1234567890' })
  const ws = await TestClient.open(`${wsUrl}?foo=1&token=${secretLooking}`)
  t.equal((await ws.subscribe('Team', 'logged')).type, OK)
  ws.close()
  const bad = await TestClient.open(`${wsUrl}?token=${badTokens['bad signature']}`)
  await bad.closed
  const all = logLines.join('')
  t.ok(logLines.some((l) => l.includes('incoming request') && l.includes('token=[redacted]')), 'the request is logged, redacted')
  t.notOk(all.includes(secretLooking.split('.')[1]), 'no token claims in the logs')
  t.notOk(all.includes(secretLooking.split('.')[2]), 'no token signature in the logs')
  t.notOk(all.includes(badTokens['bad signature'].split('.')[2]), 'not even a refused one')
})

t.test('exp is required unless requireExpiry is false; a configured issuer and audience must be in the token', async (t) => {
  const { authenticator: strict } = await standaloneAuthenticator(t, { jwt: { secret: SECRET, issuer: ISSUER, audience: AUDIENCE } })
  const { authenticator: lax } = await standaloneAuthenticator(t, { jwt: { secret: SECRET, requireExpiry: false } })
  const without = (claim: string): string => {
    const all: Record<string, unknown> = { ...claims('user-1') }
    delete all[claim]
    return signHs256(all, SECRET)
  }
  const missing = { failure: 'FAST_JWT_MISSING_REQUIRED_CLAIM' }
  t.same(await strict.verifyToken(without('exp')), missing, 'no exp: refused by default')
  t.same(await strict.verifyToken(without('iss')), missing, 'no iss where an issuer is configured')
  t.same(await strict.verifyToken(without('aud')), missing, 'no aud where an audience is configured')
  t.match(await strict.verifyToken(token('user-1')), { principal: { userId: 'user-1' } })
  t.match(await lax.verifyToken(without('exp')), { principal: { userId: 'user-1', expiresAt: null } }, 'no exp: accepted with requireExpiry false')
  t.match(await lax.verifyToken(without('iss')), { principal: { userId: 'user-1' } }, 'no issuer configured, none required')
})

t.test('no route of the plugin logs a credential in its URL', async (t) => {
  const http = wsUrl.replace(/^ws:/, 'http:').replace(/\/ws$/, '')
  const admin = token('admin-9', ['Admin'], { jti: 'STATS-LOG-CANARY-0987654321' })
  const res = await fetch(`${http}/changefeed/stats?token=${admin}&Access_Token=${admin}&PASSWORD=hunter2-canary`)
  t.equal(res.status, 200, 'the admin token in the URL signs in')
  t.equal((await fetch(`${http}/health/live?%74oken=${admin}`)).status, 200)
  const lines = logLines.filter((l) => l.includes('/changefeed/stats') || l.includes('/health/live'))
  t.ok(lines.some((l) => l.includes('token=[redacted]')), 'the requests are logged, redacted')
  const all = logLines.join('')
  for (const part of admin.split('.')) t.notOk(all.includes(part), 'no part of the token in any log line')
  t.notOk(all.includes('hunter2-canary'), 'nor the password')
})

t.test('a host that applies the exported serializer and not-found handler logs no credential on any path', async (t) => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, done) { lines.push(chunk.toString()); done() } })
  const host = Fastify({ logger: { level: 'info', stream, serializers: { req: requestLogSerializer } } })
  host.setNotFoundHandler(redactedNotFound)
  t.teardown(async () => await host.close())
  await host.register(changefeed, { entities: { Team: { access: 'public' } }, auth: { jwt: { secret: SECRET, issuer: ISSUER, audience: AUDIENCE } } })
  host.get('/api/health', async () => ({ ok: true }))
  const canary = token('user-1', ['Member'], { jti: 'HOST-LOG-CANARY-1122334455' })
  const missing = await host.inject({ url: `/ws/?token=${canary}` })
  t.equal(missing.statusCode, 404)
  t.notOk(missing.body.includes(canary), 'nor in the 404 answer')
  t.equal((await host.inject({ url: `/api/health?access_token=${canary}` })).statusCode, 200)
  t.ok(lines.some((l) => l.includes('/ws/?token=[redacted]')) && lines.some((l) => l.includes('/api/health?access_token=[redacted]')), 'logged, redacted')
  for (const part of canary.split('.').slice(1)) t.notOk(lines.join('').includes(part), 'no part of the token in any log line')
})

t.test('auth counters count attempts and failures by method', async (t) => {
  const { auth } = app.changefeed.stats()
  t.ok(auth.attempts.jwt > 0 && auth.failures.jwt >= Object.keys(badTokens).length * 2)
  t.ok(auth.attempts.basic >= 4 && auth.failures.basic >= 3)
})
