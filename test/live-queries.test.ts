/**
 * Live queries against PostgreSQL: a subscription that starts from the current state with no gap and no duplicate
 * (`snapshot`), many entities in one request (`entityIds`), and filtered feeds (`where`) with entered and left,
 * on one instance and across instances on Redis and on NATS.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { freshDatabase, martenTableSql, sqlClient } from './helpers/services.js'
import { startApp } from './helpers/app.js'
import { TestClient, isNotification, type Frame } from './helpers/client.js'
import { now, signHs256 } from './helpers/tokens.js'
import { NATS_URL, REDIS_URL } from './helpers/brokers.js'
import { WireError, type ChangefeedPluginOptions } from '../lib/index.js'
import { until } from './helpers/wait.js'

const SECRET = 'live-queries-test-secret-0123456789'
const url = await freshDatabase(t, 'live_queries')
const sql = await sqlClient(t, url)
for (const table of ['mt_doc_player', 'mt_doc_counter', 'mt_doc_team', 'mt_doc_usersettings', 'mt_doc_match']) await sql.query(martenTableSql(table))

const entities = {
  Player: { access: 'public', payload: 'full', feed: true },
  Counter: { access: 'public', payload: 'full' },
  Match: { access: 'public', payload: 'delta', feed: true },
  Team: { access: 'public', feed: true },
  UserSettings: { access: 'owner', payload: 'full' },
  Roster: { access: 'public', payload: 'full', tenanted: true }
} as const
const { app, url: wsUrl } = await startApp(t, {
  databases: [{ name: 'main', url }],
  entities,
  auth: { jwt: { secret: SECRET } },
  limits: { maxFiltersPerType: 3, maxSubscriptionsPerConnection: 20, subscribeRatePerSecond: 5, feedMessagesPerSecond: 1000 }
})

const open = async (address = wsUrl, sub: string | null = null): Promise<TestClient> => {
  const c = await TestClient.open(sub === null ? address : `${address}?token=${signHs256({ sub, exp: now() + 600 }, SECRET)}`)
  t.teardown(() => c.close())
  return c
}
let requests = 0
/** Sends a request and waits for its one reply. */
const ask = async (c: TestClient, type: string, data: object): Promise<Frame> => {
  const id = `q${++requests}`
  c.send({ type, id, data })
  return await c.next((m) => m.id === id)
}
const write = async (table: string, id: string, doc: object): Promise<void> => {
  await sql.query(`INSERT INTO ${table} (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, mt_version = gen_random_uuid()`, [id, JSON.stringify(doc)])
}

t.test('snapshot: the current document, its version and position; null when there is none; no payload for minimal types', async (t) => {
  await write('mt_doc_player', 'snap-1', { name: 'Ada', teamId: 'team-1' })
  const c = await open()
  const reply = await ask(c, 'subscribe', { entityType: 'Player', entityId: 'snap-1', snapshot: true })
  t.match(reply, { type: 'subscribed', data: { subscriptionId: 'Player:snap-1', snapshot: { payload: { name: 'Ada' }, version: String, position: /^n:\d+$/ } } })
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: 'nobody', snapshot: true }), { data: { snapshot: { payload: null, version: null } } })
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['snap-team', '{"name":"Reds"}'])
  const team = await ask(c, 'subscribe', { entityType: 'Team', entityId: 'snap-team', snapshot: true })
  t.match(team, { data: { snapshot: { version: String, position: /^n:/ } } })
  t.notOk('payload' in team.data.snapshot, 'a minimal type\'s snapshot has no document')
  // the next change comes after the snapshot
  await write('mt_doc_player', 'snap-1', { name: 'Ada', teamId: 'team-2' })
  t.match((await c.next(isNotification('Player', 'snap-1'))).data, { changeType: 'updated', payload: { teamId: 'team-2' } })
})

t.test('snapshot with concurrent writes: each client\'s snapshot plus its notifications cover every later change exactly once', async (t) => {
  await write('mt_doc_counter', 'hot', { n: 0 })
  const FINAL = 150
  const clients = await Promise.all(Array.from({ length: 8 }, async () => await open()))
  let written = 0
  const writer = (async () => {
    for (let n = 1; n <= FINAL; n++) {
      await write('mt_doc_counter', 'hot', { n })
      written = n
    }
  })()
  const starts: number[] = []
  for (const c of clients) {
    // spread over the writes: each client subscribes a few writes after the one before it
    t.ok(await until(() => written >= Math.min(FINAL, (starts.at(-1) ?? 0) + 5), 10_000))
    const reply = await ask(c, 'subscribe', { entityType: 'Counter', entityId: 'hot', snapshot: true })
    starts.push(reply.data.snapshot.payload.n)
  }
  await writer
  for (const [i, c] of clients.entries()) {
    t.ok(await until(() => c.messages.some((m) => m.type === 'notification' && m.data.payload?.n === FINAL) || starts[i] === FINAL, 10_000), `client ${i} reaches the last write`)
    const seen = c.messages.filter((m) => m.type === 'notification').map((m) => m.data.payload.n as number)
    const expected = Array.from({ length: FINAL - starts[i] }, (_, k) => starts[i] + 1 + k)
    t.same(seen, expected, `client ${i}: snapshot at ${starts[i]}, then every later change once, in order`)
  }
  t.ok(new Set(starts).size > 1, `the snapshots were taken at different points (${starts.join(', ')})`)
})

t.test('delta types: the snapshot is the base of the next patch', async (t) => {
  // a document large enough that a patch is smaller than it
  const venue = 'Stadium '.repeat(100)
  await write('mt_doc_match', 'm-1', { venue, home: 0, away: 0, events: [] })
  const c = await open()
  const reply = await ask(c, 'subscribe', { entityType: 'Match', entityId: 'm-1', snapshot: true })
  const base = reply.data.snapshot.position
  // the publisher keeps the last document it routed (full or patch, depending on whether the insert was routed)
  await write('mt_doc_match', 'm-1', { venue, home: 3, away: 0, events: ['try'] })
  const first = await c.next(isNotification('Match', 'm-1'))
  if (first.data.payloadType === 'delta') t.equal(first.data.basePosition, base, 'a patch only on the snapshot')
  const c2 = await open()
  const again = await ask(c2, 'subscribe', { entityType: 'Match', entityId: 'm-1', snapshot: true })
  t.equal(again.data.snapshot.position, first.data.position, 'the snapshot stands at the last change')
  await write('mt_doc_match', 'm-1', { venue, home: 3, away: 7, events: ['try', 'try'] })
  const patch = await c2.next(isNotification('Match', 'm-1'))
  t.match(patch.data, { payloadType: 'delta', basePosition: again.data.snapshot.position }, 'a patch on the snapshot')
  t.not(base, again.data.snapshot.position)
})

t.test('many entities in one request: subscribed, refused and unknown ids in one reply; one unsubscribe', async (t) => {
  const c = await open(wsUrl, 'user-1')
  await sql.query('INSERT INTO mt_doc_usersettings (id, data) VALUES ($1, $2), ($3, $4)', ['user-1', '{"theme":"dark"}', 'user-2', '{"theme":"light"}'])
  const reply = await ask(c, 'subscribe', { entityType: 'UserSettings', entityIds: ['user-1', 'user-2', 'user-1'], snapshot: true })
  t.match(reply, {
    type: 'subscribed',
    data: {
      entityType: 'UserSettings',
      subscribed: ['user-1'],
      errors: [{ entityId: 'user-2', code: WireError.forbidden }],
      snapshots: { 'user-1': { payload: { theme: 'dark' } } }
    }
  })
  t.match(await ask(c, 'subscribe', { entityType: 'Nope', entityIds: ['a', 'b'] }), { data: { subscribed: [], errors: [{ entityId: 'a', code: WireError.unknownEntityType }, { entityId: 'b' }] } })
  const players = await ask(c, 'subscribe', { entityType: 'Player', entityIds: ['bp-1', 'bp-2', 'bp-3'] })
  t.same(players.data, { entityType: 'Player', subscribed: ['bp-1', 'bp-2', 'bp-3'], errors: [] })
  await write('mt_doc_player', 'bp-2', { name: 'B' })
  t.match((await c.next(isNotification('Player', 'bp-2'))).data, { payload: { name: 'B' } })
  t.same((await ask(c, 'unsubscribe', { entityType: 'Player', entityIds: ['bp-1', 'bp-2'] })).data, { entityType: 'Player', unsubscribed: ['bp-1', 'bp-2'] })
  await write('mt_doc_player', 'bp-2', { name: 'B2' })
  await write('mt_doc_player', 'bp-3', { name: 'C' })
  await c.next(isNotification('Player', 'bp-3'))
  t.notOk(c.messages.some(isNotification('Player', 'bp-2')), 'unsubscribed ids get nothing more')
})

t.test('a snapshot that cannot be read: a tenanted type without a tenant, alone and in a batch', async (t) => {
  const c = await open()
  t.match(await ask(c, 'subscribe', { entityType: 'Roster', entityId: 'r-1', snapshot: true }), { type: 'subscription_error', data: { code: WireError.badRequest, error: /tenant/ } })
  t.match(await ask(c, 'subscribe', { entityType: 'Roster', entityIds: ['r-1', 'r-2'], snapshot: true }),
    { type: 'subscribed', data: { subscribed: [], errors: [{ entityId: 'r-1', code: WireError.badRequest }, { entityId: 'r-2', code: WireError.badRequest }] } })
  t.equal(app.changefeed.stats().subscriptions.byType.Roster ?? 0, 0, 'nothing is left subscribed')
  t.match(await ask(c, 'subscribe', { entityType: 'Roster', entityId: 'r-1', tenantId: 'red' }), { type: 'subscribed' }, 'without a snapshot it subscribes')
})

t.test('a batch counts entities: the per-connection limit and the rate', async (t) => {
  const c = await open()
  // the burst is maxSubscriptionsPerConnection + subscribeRatePerSecond: 25
  const ids = Array.from({ length: 26 }, (_, i) => `lim-${i}`)
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityIds: ids }), { type: 'error', data: { code: WireError.rateLimited } }, 'more entities than the burst allows')
  const reply = await ask(c, 'subscribe', { entityType: 'Player', entityIds: ids.slice(0, 22) })
  t.equal(reply.data.subscribed.length, 20, 'up to maxSubscriptionsPerConnection')
  t.same(reply.data.errors.map((e: { code: string }) => e.code), [WireError.tooManySubscriptions, WireError.tooManySubscriptions])
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityIds: ['m-1', 'm-2', 'm-3', 'm-4'] }), { type: 'error', data: { code: WireError.rateLimited } }, 'the 22 took their tokens: 3 left')
})

t.test('filtered feeds: snapshot of the matching entities, then entered, updated, left and deleted', async (t) => {
  await write('mt_doc_player', 'f-1', { name: 'One', teamId: 'reds', position: 'wing' })
  await write('mt_doc_player', 'f-2', { name: 'Two', teamId: 'reds', position: 'prop' })
  await write('mt_doc_player', 'f-3', { name: 'Three', teamId: 'blues', position: 'wing' })
  const c = await open()
  const where = { teamId: 'reds', position: ['wing', 'centre'] }
  const reply = await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where, snapshot: true })
  const subscriptionId = 'Player:*{"position":["centre","wing"],"teamId":"reds"}'
  t.match(reply.data, { subscriptionId, entityId: '*', where: { position: ['centre', 'wing'], teamId: 'reds' } })
  t.same(reply.data.snapshot.entities.map((e: { entityId: string }) => e.entityId), ['f-1'])
  t.match(reply.data.snapshot.entities[0], { payload: { name: 'One' }, position: /^n:/ })

  const next = async (): Promise<Frame['data']> => (await c.next((m) => m.type === 'notification')).data
  await write('mt_doc_player', 'f-2', { name: 'Two', teamId: 'reds', position: 'centre' })
  t.match(await next(), { entityId: 'f-2', changeType: 'entered', payload: { position: 'centre' }, subscriptionId })
  await write('mt_doc_player', 'f-2', { name: 'Two!', teamId: 'reds', position: 'centre' })
  t.match(await next(), { entityId: 'f-2', changeType: 'updated', payload: { name: 'Two!' } })
  await write('mt_doc_player', 'f-3', { name: 'Three', teamId: 'blues', position: 'centre' })
  await write('mt_doc_player', 'f-1', { name: 'One', teamId: 'blues', position: 'wing' })
  t.match(await next(), { entityId: 'f-1', changeType: 'left' }, 'f-3 never matched: nothing; f-1 left')
  await sql.query('DELETE FROM mt_doc_player WHERE id = $1', ['f-2'])
  t.match(await next(), { entityId: 'f-2', changeType: 'deleted' })
  const big = 'x'.repeat(10_000)
  await write('mt_doc_player', 'f-big', { name: big, teamId: 'reds', position: 'wing' })
  t.match(await next(), { entityId: 'f-big', changeType: 'entered', payload: { name: big } }, 'a document over the NOTIFY limit is read, and matched')
  t.same((await ask(c, 'unsubscribe', { subscriptionId })).data, { subscriptionId })
  await write('mt_doc_player', 'f-big', { name: 'small', teamId: 'reds', position: 'wing' })
  const marker = await open()
  await marker.subscribe('Player', 'f-big')
  await write('mt_doc_player', 'f-big', { name: 'small again', teamId: 'reds', position: 'wing' })
  await marker.next(isNotification('Player', 'f-big'))
  t.notOk(c.messages.some((m) => m.type === 'notification'), 'nothing after unsubscribing')
})

t.test('filters are shared and indexed: the same filter on many sockets, different filters side by side', async (t) => {
  const same = await Promise.all([open(), open(), open()])
  const other = await open()
  for (const c of same) t.equal((await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'greens' } })).type, 'subscribed')
  // the same conditions spelled differently are one filter
  t.match(await ask(other, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: ['golds', 'golds'] } }), { data: { subscriptionId: 'Player:*{"teamId":"golds"}' } })
  t.match(await ask(other, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'greens', 'stats.caps': 10 } }), { type: 'subscribed' })
  await write('mt_doc_player', 'g-1', { teamId: 'greens', stats: { caps: 10 } })
  for (const c of same) t.match((await c.next((m) => m.type === 'notification')).data, { entityId: 'g-1', changeType: 'entered', subscriptionId: 'Player:*{"teamId":"greens"}' })
  t.match((await other.next((m) => m.type === 'notification')).data, { entityId: 'g-1', changeType: 'entered', subscriptionId: 'Player:*{"stats.caps":10,"teamId":"greens"}' })
  await write('mt_doc_player', 'g-1', { teamId: 'golds', stats: { caps: 10 } })
  const frames = await other.collect(300, (m) => m.type === 'notification')
  t.same(frames.map((m) => [m.data.subscriptionId, m.data.changeType]).sort(), [['Player:*{"stats.caps":10,"teamId":"greens"}', 'left'], ['Player:*{"teamId":"golds"}', 'entered']])
  t.match(await ask(other, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'a' } }), { data: { code: WireError.tooManyFilters } }, 'limits.maxFiltersPerType')
  t.match(app.changefeed.stats().filters, { groups: 3, subscriptions: 5 }, 'three filters, five sockets\' subscriptions to them')
})

t.test('filtered feeds refuse what they cannot do', async (t) => {
  const c = await open()
  t.match(await ask(c, 'subscribe', { entityType: 'Team', entityId: '*', where: { name: 'x' } }), { data: { code: WireError.badRequest } }, 'a minimal type')
  t.match(await ask(c, 'subscribe', { entityType: 'Counter', entityId: '*', where: { n: 1 } }), { data: { code: WireError.forbidden } }, 'a type without feeds')
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: 'p-1', where: { n: 1 } }), { data: { code: WireError.badRequest } }, 'where needs "*"')
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { n: 1 }, since: 'x' }), { data: { code: WireError.badRequest } })
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { n: { $gt: 1 } } }), { type: 'error', data: { code: WireError.badRequest } })
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { 'a.b.c.d.e.f': 1 } }), { type: 'error', data: { code: WireError.badRequest } }, 'a path deeper than a filter may look')
  t.match(await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', snapshot: true }), { type: 'subscription_error', data: { code: WireError.badRequest } }, 'a whole feed has no snapshot')
})

for (const provider of ['redis', 'nats'] as const) {
  t.test(`across instances on ${provider}: filters and batch snapshots on every instance, the change captured by one`, async (t) => {
    const prefix = `lq-${randomUUID().slice(0, 8)}`
    const cluster: ChangefeedPluginOptions = {
      databases: [{ name: 'main', url }],
      entities,
      bus: { provider, url: provider === 'redis' ? REDIS_URL : NATS_URL, prefix },
      capture: { channel: `lq:${prefix}` }
    }
    const instances = await Promise.all([startApp(t, cluster), startApp(t, cluster), startApp(t, cluster)])
    const watchers = await Promise.all(instances.map(async ({ url }) => await open(url)))
    const id = `c-${provider}`
    for (const w of watchers) {
      t.equal((await ask(w, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: `cluster-${provider}` }, snapshot: true })).type, 'subscribed')
      t.match(await ask(w, 'subscribe', { entityType: 'Counter', entityIds: [id], snapshot: true }), { data: { subscribed: [id] } })
    }
    await write('mt_doc_player', id, { teamId: `cluster-${provider}` })
    await write('mt_doc_player', id, { teamId: 'elsewhere' })
    await write('mt_doc_counter', id, { n: 1 })
    for (const w of watchers) {
      t.match((await w.next((m) => m.type === 'notification' && m.data.entityType === 'Player')).data, { entityId: id, changeType: 'entered' })
      t.match((await w.next((m) => m.type === 'notification' && m.data.entityType === 'Player')).data, { entityId: id, changeType: 'left' })
      t.match((await w.next(isNotification('Counter', id))).data, { changeType: 'created', payload: { n: 1 } })
    }
  })
}
