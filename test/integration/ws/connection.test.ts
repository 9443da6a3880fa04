/**
 * Findings of a security and robustness review, each reproduced first: every request gets exactly one reply even
 * when the server fails inside; sockets that close in the middle of a request leave nothing behind; ids with
 * control characters are refused; an owner-scoped document that changes owner stops flowing to the old owner; the
 * Origin allow-list; a busy feed's batch never outgrows the socket; `since` replays are bounded per address.
 */
import t from 'tap'
import WebSocket from 'ws'
import { startApp } from '../../helpers/app.js'
import { TestClient, isNotification } from '../../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, roles: string[] = []): string => signHs256({ sub, roles, exp: now() + 600 }, SECRET)

const url = await freshDatabase(t, 'hardening')
const sql = await sqlClient(t, url)
for (const table of ['mt_doc_team', 'mt_doc_usersettings', 'mt_doc_match']) await sql.query(martenTableSql(table))
const settings = async (id: string, userId: string, theme = 'dark'): Promise<void> => {
  await sql.query('INSERT INTO mt_doc_usersettings (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()',
    [id, JSON.stringify({ userId, theme })])
}

t.test('a request that fails inside gets exactly one reply: internal_error', async (t) => {
  let authorizeThrows = true
  const { client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: {
      Team: { access: 'public' },
      // its table does not exist: the owner check fails in the database
      Missing: { access: 'owner', ownerPath: ['userId'], table: 'mt_doc_missing' }
    },
    auth: { jwt: { secret: SECRET } },
    authorize: () => { if (authorizeThrows) throw new Error('the host rule broke'); return true }
  })
  const ws = await client(`?token=${token('user-1')}`)
  for (const [type, id] of [['Missing', 'm-1'], ['Team', 't-1']]) {
    ws.send({ type: 'subscribe', id: `${type}-req`, data: { entityType: type, entityId: id } })
    const reply = await ws.next((m) => m.id === `${type}-req`)
    t.equal(reply.type, 'subscription_error', `${type}: answered`)
    t.equal(reply.data.code, WireError.internal, `${type}: internal_error, retryable`)
  }
  authorizeThrows = false
  t.equal((await ws.subscribe('Team', 't-1', 'retry')).type, 'subscribed', 'the retry succeeds once the server works')
  t.equal(ws.messages.filter((m) => m.id === 'Missing-req' || m.id === 'Team-req').length, 0, 'no second reply to either request')
})

t.test('sockets closed in the middle of any request leave nothing behind', async (t) => {
  const { app, url: wsUrl } = await startApp(t, {
    databases: [{ name: 'main', url }],
    capture: { mode: 'outbox', channel: 'cf_hardening_outbox' },
    entities: { Team: { access: 'public', payload: 'full' } },
    auth: { jwt: { secret: SECRET } },
    limits: { maxConnectionsPerUser: 1000 }
  })
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-close\', \'{"name":"a"}\')')
  const probe = await TestClient.open(wsUrl)
  probe.send({ type: 'subscribe', id: 'p', data: { entityType: 'Team', entityId: 't-close' } })
  await probe.next((m) => m.id === 'p')
  await sql.query('UPDATE mt_doc_team SET data = \'{"name":"b"}\' WHERE id = \'t-close\'')
  const since = (await probe.next(isNotification('Team', 't-close'))).data.position as string
  probe.close()

  const requests: Array<[string, object]> = [
    ['subscribe', { entityType: 'Team', entityId: 't-close' }],
    ['subscribe', { entityType: 'Team', entityId: 't-close', since }],
    ['subscribe', { entityType: 'Team', entityId: 't-close', since, watchers: true }],
    ['subscribe', { entityType: 'Team', entityId: 't-close', watchers: true }],
    ['unsubscribe', { entityType: 'Team', entityId: 't-close' }],
    ['auth', { token: token('user-2') }]
  ]
  for (const [type, data] of requests) {
    await Promise.all(Array.from({ length: 25 }, async () => {
      const ws = new WebSocket(wsUrl)
      await new Promise((resolve) => ws.once('open', resolve))
      ws.send(JSON.stringify({ type: 'subscribe', id: 'first', data: { entityType: 'Team', entityId: 't-close', watchers: true } }))
      ws.send(JSON.stringify({ type, id: 'r', data }))
      ws.terminate()
    }))
  }
  const stats = (): ReturnType<typeof app.changefeed.stats> => app.changefeed.stats()
  t.ok(await until(() => stats().connections.active === 0), 'every socket is gone')
  t.ok(await until(() => stats().subscriptions.active === 0 && stats().subscriptions.counted === 0 && stats().bus.channels === 0),
    `no subscription, watcher count or bus subscription is left: ${JSON.stringify(stats().subscriptions)}`)
  t.equal(await app.changefeed.watchers('Team', 't-close'), 0, 'nobody counts as watching')
})

t.test('ids with control characters are refused with bad_request', async (t) => {
  const { client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: { UserSettings: { access: 'owner', ownerPath: ['userId'] } },
    auth: { jwt: { secret: SECRET } }
  })
  const ws = await client(`?token=${token('user-1')}`)
  for (const id of ['a\u0000b', 'line\nbreak', '\u007f']) {
    ws.send({ type: 'subscribe', id: 'bad', data: { entityType: 'UserSettings', entityId: id } })
    const reply = await ws.next((m) => m.id === 'bad')
    t.equal(reply.type, 'error')
    t.equal(reply.data.code, WireError.badRequest, JSON.stringify(id))
  }
  t.equal((await ws.subscribe('UserSettings', 'us-none')).data.code, WireError.forbidden, 'the socket still works')
})

t.test('a full owner-scoped document that changes owner stops flowing to the old owner', async (t) => {
  await settings('us-move', 'user-1')
  const { client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: { UserSettings: { access: 'owner', ownerPath: ['userId'], payload: 'full' } },
    auth: { jwt: { secret: SECRET } }
  })
  const owner = await client(`?token=${token('user-1')}`)
  const admin = await client(`?token=${token('boss', ['Admin'])}`)
  t.equal((await owner.subscribe('UserSettings', 'us-move')).type, 'subscribed')
  t.equal((await admin.subscribe('UserSettings', 'us-move')).type, 'subscribed')
  await settings('us-move', 'user-1', 'light')
  t.equal((await owner.next(isNotification('UserSettings', 'us-move'))).data.payload.theme, 'light', 'the owner sees its change')
  await settings('us-move', 'user-2', 'secret-of-user-2')
  const ended = await owner.next((m) => m.type === 'subscription_error')
  t.equal(ended.data.code, WireError.forbidden, 'the old owner is told the subscription ended')
  t.equal((await admin.next((m) => isNotification('UserSettings', 'us-move')(m) && m.data.payload.theme === 'secret-of-user-2')).data.payload.userId, 'user-2', 'an admin still sees it')
  await settings('us-move', 'user-1', 'back')
  t.equal((await admin.next((m) => isNotification('UserSettings', 'us-move')(m) && m.data.payload.theme === 'back')).type, 'notification')
  t.notOk(owner.raw.some((f) => f.includes('secret-of-user-2')), 'the new owner\'s document never reached the old owner')
  t.notOk(owner.messages.some(isNotification('UserSettings', 'us-move')), 'nothing after the subscription ended')
})

t.test('server.allowedOrigins refuses other sites\' pages before the upgrade', async (t) => {
  const { url: wsUrl } = await startApp(t, { entities: { Team: { access: 'public' } }, server: { allowedOrigins: ['https://app.ballr.test'] } })
  const status = async (origin?: string): Promise<number> => await new Promise((resolve) => {
    const ws = new WebSocket(wsUrl, origin === undefined ? {} : { origin })
    ws.once('open', () => { ws.close(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
  })
  t.equal(await status('https://evil.test'), 403, 'another origin')
  t.equal(await status('https://app.ballr.test'), 101, 'the allowed origin')
  t.equal(await status(), 101, 'no Origin header (a server-side client)')
})

t.test('a busy feed is batched in frames that fit the socket', async (t) => {
  const { app, client } = await startApp(t, {
    entities: { Score: { access: 'public', payload: 'full', feed: true } },
    limits: { feedMessagesPerSecond: 1, feedBatchIntervalMs: 200, maxBufferedBytes: 64 * 1024, conflateAboveBytes: 32 * 1024 }
  })
  const ws = await client()
  t.equal((await ws.subscribe('Score', '*')).type, 'subscribed')
  const filler = 'x'.repeat(2000)
  for (let i = 0; i < 300; i++) await app.changefeed.publish({ entityType: 'Score', entityId: `m-${i}`, changeType: 'updated', payload: { i, filler } })
  const delivered = (): number => ws.messages.reduce((n, m) => n + (m.type === 'batch' ? m.data.length : m.type === 'notification' ? 1 : 0), 0)
  t.ok(await until(() => delivered() === 300), 'every change arrives')
  t.ok(ws.messages.some((m) => m.type === 'batch'), 'in batches')
  t.ok(ws.raw.every((f) => f.length <= 16 * 1024 + 2100), `no frame over a quarter of maxBufferedBytes (largest ${Math.max(...ws.raw.map((f) => f.length))})`)
})

t.test('since replays are bounded per address: past the limit the answer is recovered: false', async (t) => {
  const { client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    capture: { mode: 'outbox', channel: 'cf_hardening_replays' },
    entities: { Match: { access: 'public' } },
    limits: { replaysPerIpPerSecond: 1 }
  })
  const probe = await client()
  await probe.subscribe('Match', 'm-r')
  await sql.query('INSERT INTO mt_doc_match (id, data) VALUES (\'m-r\', \'{}\')')
  const since = (await probe.next(isNotification('Match', 'm-r'))).data.position as string
  const recovered: boolean[] = []
  for (let i = 0; i < 15; i++) {
    const ws = await client()
    ws.send({ type: 'subscribe', id: 'r', data: { entityType: 'Match', entityId: 'm-r', since } })
    recovered.push((await ws.next((m) => m.id === 'r')).data.recovered as boolean)
    ws.close()
  }
  t.same(recovered.slice(0, 10), Array(10).fill(true), 'the burst is served')
  t.ok(recovered.slice(10).includes(false), `then refused: ${JSON.stringify(recovered)}`)
})
