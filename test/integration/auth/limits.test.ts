/**
 * Sign-in limits: attempts count before their check (those under way too), per address and per account; password
 * checks run a few at a time; the in-band `auth` message is limited and counted like a sign-in at the upgrade.
 * The counting on a fake clock, then real scrypt checks through the Authenticator, then a real socket.
 */
import t from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import type { AddressInfo } from 'node:net'
import changefeed from '../../../lib/index.js'
import { Clock } from 'clock-mock'
import { AuthFailure } from '../../../lib/auth/authenticate.js'
import { ConcurrencyLimit, SignInLimiter, type Reservation } from '../../../lib/auth/limiter.js'
import { hashPassword } from '../../../lib/auth/passwords.js'
import { startApp } from '../../helpers/app.js'
import { standaloneAuthenticator } from '../../helpers/authenticator.js'
import { TestClient } from '../../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { until } from '../../helpers/wait.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { WireError } from '../../../lib/errors.js'

interface Teardown { teardown(fn: () => unknown): void }

t.test('limiter: attempts under way count against the limit; a success frees its place', async (t) => {
  const limiter = new SignInLimiter(3, new Clock())
  const held = [limiter.reserve('10.0.0.1', null), limiter.reserve('10.0.0.1', null), limiter.reserve('10.0.0.1', null)]
  t.ok(held.every((r) => r !== null))
  t.equal(limiter.reserve('10.0.0.1', null), null, 'three under way: the fourth is refused before any result')
  held[0]!.settle(false)
  const next = limiter.reserve('10.0.0.1', null)
  t.not(next, null, 'a success frees its place')
  for (const r of [next, held[1], held[2]]) r!.settle(true)
  t.equal(limiter.reserve('10.0.0.1', null), null, 'three failures: locked')
})

t.test('limiter: a window lasts a minute from its first attempt', async (t) => {
  const clock = new Clock()
  const limiter = new SignInLimiter(2, clock)
  limiter.reserve('10.0.0.1', null)!.settle(true)
  clock.advance(30_000)
  limiter.reserve('10.0.0.1', null)!.settle(true)
  t.equal(limiter.reserve('10.0.0.1', null), null)
  clock.advance(29_999)
  t.equal(limiter.reserve('10.0.0.1', null), null, 'still locked just before the minute is over')
  clock.advance(1)
  t.not(limiter.reserve('10.0.0.1', null), null, 'a new window')
})

t.test('limiter: addresses and accounts are counted apart', async (t) => {
  const limiter = new SignInLimiter(3, new Clock())
  const fail = (r: Reservation | null): void => r!.settle(true)
  for (let i = 0; i < 3; i++) fail(limiter.reserve(`10.0.1.${i}`, 'victim'))
  t.equal(limiter.reserve('10.0.2.1', 'victim'), null, 'failures at one account from many addresses lock it from everywhere')
  t.not(limiter.reserve('10.0.2.1', 'someone'), null, 'the other accounts of those addresses are unaffected')
  for (let i = 0; i < 3; i++) fail(limiter.reserve('10.0.3.1', `guess-${i}`))
  t.equal(limiter.reserve('10.0.3.1', 'bystander'), null, 'a flooding address is locked for every account')
  t.not(limiter.reserve('10.0.3.2', 'bystander'), null, 'the same account from another address is not')
  t.not(limiter.reserve('10.0.3.2', 'guess-0'), null, 'nor an account it failed at fewer times than the limit')
})

t.test('limiter: new keys do not push out a locked account', async (t) => {
  const limiter = new SignInLimiter(3, new Clock())
  for (let i = 0; i < 3; i++) limiter.reserve(`10.1.0.${i}`, 'victim')!.settle(true)
  for (let i = 0; i < 20_000; i++) limiter.reserve(`10.2.${i >> 8}.${i & 255}`, `noise-${i}`)!.settle(true)
  t.equal(limiter.reserve('10.3.0.1', 'victim'), null, 'still locked after 20,000 other accounts failed')
})

t.test('concurrency limit: at most `max` at once, `maxWaiting` in line, the rest turned away', async (t) => {
  const limit = new ConcurrencyLimit(4, 2)
  const acquired = await Promise.all([1, 2, 3, 4].map(async () => await limit.acquire()))
  t.same(acquired, [true, true, true, true])
  let started = 0
  const waiting = [limit.acquire(), limit.acquire()].map(async (p) => { const ok = await p; started++; return ok })
  t.equal(await limit.acquire(), false, 'a third in line is turned away')
  limit.release()
  t.equal(await waiting[0], true, 'a release lets the first in line run')
  t.equal(started, 1)
  limit.release()
  t.equal(await waiting[1], true)
})

const importerPassword = 'correct horse battery staple'
const exporterPassword = 'tr0ub4dor&3'
const accounts = [
  { username: 'importer', passwordHash: await hashPassword(importerPassword), roles: ['Service'] },
  { username: 'exporter', passwordHash: await hashPassword(exporterPassword), roles: ['Service'] }
]

async function signInRoute (t: Teardown): Promise<(ip: string, user: string, password: string) => Promise<{ failure?: string, principal?: { userId: string } }>> {
  const { app } = await standaloneAuthenticator(t, { anonymous: false, basic: { accounts } })
  return async (ip, user, password) => {
    const authorization = 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64')
    return (await app.inject({ url: '/who', remoteAddress: ip, headers: { authorization } })).json()
  }
}

const tally = (results: Array<{ failure?: string }>): Record<string, number> => {
  const counts: Record<string, number> = {}
  for (const r of results) counts[r.failure ?? 'ok'] = (counts[r.failure ?? 'ok'] ?? 0) + 1
  return counts
}

t.test('150 wrong passwords at once from one address: 30 are checked, and that address and account are locked', async (t) => {
  const signIn = await signInRoute(t)
  const burst = await Promise.all(Array.from({ length: 150 }, async () => await signIn('192.0.2.1', 'importer', 'guess')))
  t.same(tally(burst), { [AuthFailure.badCredentials]: 30, [AuthFailure.tooManyAttempts]: 120 })
  t.match(await signIn('192.0.2.1', 'exporter', exporterPassword), { failure: AuthFailure.tooManyAttempts }, 'the address is locked for every account')
  t.match(await signIn('192.0.2.2', 'importer', importerPassword), { failure: AuthFailure.tooManyAttempts }, 'the account it flooded is locked from everywhere')
  t.match(await signIn('192.0.2.2', 'exporter', exporterPassword), { principal: { userId: 'exporter' } }, 'another account from another address signs in')
})

t.test('wrong passwords at one account from many addresses lock that account only', async (t) => {
  const signIn = await signInRoute(t)
  const spread = await Promise.all(Array.from({ length: 40 }, async (_, i) => await signIn(`198.51.100.${i}`, 'importer', 'guess')))
  t.same(tally(spread), { [AuthFailure.badCredentials]: 30, [AuthFailure.tooManyAttempts]: 10 })
  t.match(await signIn('203.0.113.1', 'importer', importerPassword), { failure: AuthFailure.tooManyAttempts })
  t.match(await signIn('198.51.100.1', 'exporter', exporterPassword), { principal: { userId: 'exporter' } })
})

t.test('password checks run 4 at a time with 32 waiting; beyond that attempts are turned away unchecked', async (t) => {
  const signIn = await signInRoute(t)
  const crowd = await Promise.all(Array.from({ length: 150 }, async (_, i) => await signIn(`203.0.113.${i}`, `user-${i}`, 'guess')))
  const counts = tally(crowd)
  t.equal(counts[AuthFailure.badCredentials], 36, 'checked: 4 running and 32 waiting')
  t.equal(counts[AuthFailure.tooManyAttempts], 114)
  t.match(await signIn('203.0.113.200', 'importer', importerPassword), { principal: { userId: 'importer' } }, 'turned-away attempts lock nobody')
})

t.test('the in-band auth message is limited and counted with the sign-ins of its address', async (t) => {
  const SECRET = 'in-band-limit-secret-0123456789'
  // the socket's own bucket of auth messages is not what this is about
  const { app, url } = await startApp(t, { entities: { MemberFeed: { access: 'authenticated' } }, auth: { jwt: { secret: SECRET } }, limits: { authMessagesPerMinute: 1000 } })
  const good = signHs256({ sub: 'user-1', exp: now() + 600 }, SECRET)
  const ws = await TestClient.open(url)
  t.teardown(() => ws.close())
  for (let i = 0; i < 30; i++) {
    ws.send({ type: 'auth', id: `bad-${i}`, data: { token: signHs256({ sub: 'user-1', exp: now() + 600 }, 'wrong-secret') } })
    t.match(await ws.next((m) => m.id === `bad-${i}`), { type: 'error', data: { code: WireError.unauthenticated } })
  }
  ws.send({ type: 'auth', id: 'good', data: { token: good } })
  t.match(await ws.next((m) => m.id === 'good'), { type: 'error', data: { code: WireError.unauthenticated } }, 'a good token in-band is refused too')
  const upgrade = await TestClient.open(`${url}?token=${good}`)
  t.teardown(() => upgrade.close())
  const outcome = await Promise.race([upgrade.closed, upgrade.subscribe('MemberFeed', 'news')])
  t.match(outcome, { code: 4401 }, 'and at the upgrade from the same address')
  const { auth } = app.changefeed.stats()
  t.equal(auth.attempts.jwt, 32)
  t.equal(auth.failures.jwt, 32)
})

t.test('a flood of valid auth messages: at most the bucket\'s worth are checked, and a refresh of the same identity reads no owner', async (t) => {
  const SECRET = 'auth-flood-secret-0123456789'
  const url = await freshDatabase(t, 'auth_flood')
  // made on a connection of its own that ends, so that what it counted (index builds scan the table) is in before the first count
  const setup = new pg.Client({ connectionString: url })
  await setup.connect()
  await setup.query(martenTableSql('mt_doc_wallet'))
  await setup.query('INSERT INTO mt_doc_wallet (id, data) VALUES (\'w-1\', \'{"owner":"user-1"}\'), (\'w-2\', \'{"owner":"user-1"}\'), (\'w-3\', \'{"owner":"user-1"}\')')
  await setup.end()
  const sql = await sqlClient(t, url)
  const fresh = (jti: number, roles = ['Member']): string => signHs256({ sub: 'user-1', roles, jti, exp: now() + 600 }, SECRET)
  /**
   * Reads of the owned table, counted by PostgreSQL once the plugin's connections have ended (a backend reports its
   * counts when it exits, not at once): one run of the app each.
   */
  const reads = async (): Promise<number> => {
    const settled = await until(async () => (await sql.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()')).rows[0].n === 0, 10_000)
    t.ok(settled, 'the plugin\'s connections have ended')
    const { rows } = await sql.query('SELECT seq_scan + coalesce(idx_scan, 0) AS n FROM pg_stat_user_tables WHERE relname = \'mt_doc_wallet\'')
    return Number(rows[0].n)
  }
  /** One run: a user watches its three wallets, then sends `refreshes` auth messages of the same identity. */
  const run = async (refreshes: number): Promise<{ reads: number, checked: number, authenticated: number, limited: number }> => {
    const before = await reads()
    const app = Fastify({ logger: false })
    await app.register(changefeed, {
      databases: [{ name: 'main', url }],
      entities: { Wallet: { access: 'owner', ownerPath: ['owner'] } },
      auth: { jwt: { secret: SECRET } }
    })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const address = app.server.address() as AddressInfo
    const ws = await TestClient.open(`ws://127.0.0.1:${address.port}/ws?token=${fresh(0)}`)
    for (const id of ['w-1', 'w-2', 'w-3']) t.equal((await ws.subscribe('Wallet', id)).type, 'subscribed')
    const attemptsBefore = app.changefeed.stats().auth.attempts.jwt
    for (let i = 1; i <= refreshes; i++) ws.send({ type: 'auth', id: `a${i}`, data: { token: fresh(i) } })
    const replies = await Promise.all(Array.from({ length: refreshes }, async (_, i) => await ws.next((m) => m.id === `a${i + 1}`)))
    const checked = app.changefeed.stats().auth.attempts.jwt - attemptsBefore
    t.equal(ws.ws.readyState, 1, 'the socket stays open')
    ws.close()
    await ws.closed
    await app.close()
    return {
      reads: await reads() - before,
      checked,
      authenticated: replies.filter((m) => m.type === 'authenticated').length,
      limited: replies.filter((m) => m.type === 'error' && m.data.code === WireError.rateLimited).length
    }
  }
  const quiet = await run(0)
  t.ok(quiet.reads >= 3, `without refreshes: ${quiet.reads} reads of the table (the three owner checks among them)`)
  const flood = await run(40)
  t.ok(flood.authenticated >= 1, `some refreshes go through (${flood.authenticated})`)
  t.ok(flood.authenticated <= 7, `at most a minute's worth, the default bucket, of the 40 are taken (${flood.authenticated})`)
  t.equal(flood.checked, flood.authenticated, 'only those are checked')
  t.equal(flood.limited, 40 - flood.authenticated, 'the rest are rate_limited')
  t.equal(flood.reads, quiet.reads, `a refresh of the same user with the same roles reads no owner (${flood.reads} reads, ${quiet.reads} without refreshes)`)
})
