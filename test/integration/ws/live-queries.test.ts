/**
 * Live queries against PostgreSQL: a subscription that starts from the current state with no gap and no duplicate
 * (`snapshot`), many entities in one request (`entityIds`), and filtered feeds (`where`) with entered and left,
 * on one instance and across instances on Redis and on NATS; then the same under load, attack and a role with fewer
 * rights: slow reads, closes mid-request, writers hammering while snapshots are read, limits, tenants.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { freshDatabase, martenTableSql, sqlClient, adminQuery } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { TestClient, isNotification, type Frame } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { NATS_URL, REDIS_URL } from '../../helpers/brokers.js'
import { WireError, type ChangefeedPluginOptions } from '../../../lib/index.js'
import { until } from '../../helpers/wait.js'
import pg from 'pg'
import { role } from '../../helpers/roles.js'
import { documentTable, documentSchema, upsertCall, type DocumentOptions } from '../../fixtures/marten/index.js'

t.test('live queries: snapshots, many entities, filtered feeds', async (t) => {
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
    // the transaction's position, or, when the insert went out on the channel here already, the channel's
    t.match(team, { data: { snapshot: { version: String, position: /^(n:\d+|[0-9a-f]+:\d+)$/ } } })
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
    t.match(players.data, { entityType: 'Player', subscribed: ['bp-1', 'bp-2', 'bp-3'], errors: [] })
    t.same(Object.keys(players.data.positions ?? {}), ['bp-1', 'bp-2', 'bp-3'], 'where each starts')
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
})

t.test('live queries under load, attack and fewer rights', async (t) => {
  const SECRET = 'attack-live-test-secret-0123456789'
  const url = await freshDatabase(t, 'attack_live')
  const dbName = new URL(url).pathname.slice(1)
  const sql = await sqlClient(t, url)
  for (const table of ['mt_doc_player', 'mt_doc_counter', 'mt_doc_blocker', 'mt_doc_usersettings', 'mt_doc_match', 'mt_doc_hot']) await sql.query(martenTableSql(table))
  await sql.query(documentTable({ schema: 'public', name: 'longdoc', idType: 'long', softDelete: true }))
  await sql.query(documentTable({ schema: 'public', name: 'guiddoc', idType: 'guid', softDelete: true }))

  const entities = {
    Player: { access: 'public', payload: 'full', feed: true },
    Counter: { access: 'public', payload: 'full' },
    Hot: { access: 'public', payload: 'full', feed: true },
    Blocker: { access: 'public', payload: 'full' },
    Match: { access: 'public', payload: 'delta', feed: true },
    UserSettings: { access: 'owner', payload: 'full', ownerPath: ['userId'] },
    LongDoc: { access: 'public', payload: 'full', feed: true },
    GuidDoc: { access: 'public', payload: 'full', feed: true }
  } satisfies ChangefeedPluginOptions['entities']

  /** The authorize rule can be made to wait (a host rule that calls out to another service). */
  let gate: { id: string, reached: () => void, wait: Promise<void> } | null = null
  const makeApp = async (limits: object = {}, extra: object = {}) => await startApp(t, {
    databases: [{ name: 'main', url }],
    entities,
    auth: { jwt: { secret: SECRET } },
    authorize: async ({ entityId }) => {
      if (gate !== null && entityId === gate.id) {
        gate.reached()
        await gate.wait
      }
      return true
    },
    limits: { maxFiltersPerType: 3, maxSubscriptionsPerConnection: 20, subscribeRatePerSecond: 5, feedMessagesPerSecond: 100_000, ...limits },
    ...extra
  })
  const { app, url: wsUrl } = await makeApp()

  const open = async (address = wsUrl, sub: string | null = null): Promise<TestClient> => {
    const c = await TestClient.open(sub === null ? address : `${address}?token=${signHs256({ sub, exp: now() + 600 }, SECRET)}`)
    t.teardown(() => c.close())
    return c
  }
  let requests = 0
  const ask = async (c: TestClient, type: string, data: object, timeoutMs = 5000): Promise<Frame> => {
    const id = `q${++requests}`
    c.send({ type, id, data })
    return await c.next((m) => m.id === id, timeoutMs)
  }
  const write = async (table: string, id: string, doc: object, db: pg.Client = sql): Promise<void> => {
    await db.query(`INSERT INTO ${table} (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, mt_version = gen_random_uuid()`, [id, JSON.stringify(doc)])
  }
  const pong = async (c: TestClient): Promise<void> => {
    c.send({ type: 'ping' })
    await c.next((m) => m.type === 'pong')
  }

  /**
   * Fills the server's 16 database-read slots (ReplayLimiter) with snapshot reads of a locked table: a 17th read
   * waits in the limiter's queue until `release`.
   */
  async function saturateReads (): Promise<{ release: () => Promise<void> }> {
    await write('mt_doc_blocker', 'b', { n: 1 })
    const warm = await open()
    t.equal((await ask(warm, 'subscribe', { entityType: 'Blocker', entityId: 'b', snapshot: true })).type, 'subscribed')
    warm.close()
    const locker = new pg.Client({ connectionString: url })
    await locker.connect()
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE mt_doc_blocker IN ACCESS EXCLUSIVE MODE')
    const before = app.changefeed.stats().filters.reads
    const blocked = await Promise.all(Array.from({ length: 16 }, async () => await open()))
    for (const [i, c] of blocked.entries()) c.send({ type: 'subscribe', id: `blk${i}`, data: { entityType: 'Blocker', entityId: 'b', snapshot: true } })
    // 10 run (the pool's size) blocked on the lock; 6 wait for the pool: all 16 hold a limiter slot
    t.ok(await until(() => app.changefeed.stats().filters.reads >= before + 10), 'the reads are in flight')
    t.ok(await until(async () => (await adminQuery('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = \'Lock\'', [dbName])).rows[0].n >= 10), 'and blocked')
    return {
      release: async () => {
        await locker.query('COMMIT')
        await locker.end()
        for (const c of blocked) await c.next((m) => m.type === 'subscribed', 10_000)
        for (const c of blocked) c.close()
      }
    }
  }

  t.test('a socket that closes while its filter waits for a read slot leaves no filter behind (maxFiltersPerType is not used up)', async (t) => {
    const base = app.changefeed.stats()
    t.same(base.filters, { groups: 0, subscriptions: 0, reads: base.filters.reads })
    const { release } = await saturateReads()
    const gone: TestClient[] = []
    for (const team of ['leak-a', 'leak-b', 'leak-c']) {
      const c = await open()
      c.send({ type: 'subscribe', id: 'w', data: { entityType: 'Player', entityId: '*', where: { teamId: team }, snapshot: true } })
      await pong(c)
      gone.push(c)
    }
    const active = app.changefeed.stats().connections.active
    for (const c of gone) c.close()
    t.ok(await until(() => app.changefeed.stats().connections.active === active - 3), 'the three sockets are closed')
    await release()
    t.ok(await until(() => app.changefeed.stats().connections.active <= 1, 10_000), 'every probe socket closed')
    const settled = await until(() => { const f = app.changefeed.stats().filters; return f.groups === 0 && f.subscriptions === 0 }, 3000)
    t.ok(settled, 'no filter is held for closed sockets', { filters: app.changefeed.stats().filters, subscriptions: app.changefeed.stats().subscriptions })
    const fresh = await open()
    const reply = await ask(fresh, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'someone-else' } })
    t.equal(reply.type, 'subscribed', 'a new filter is possible once its earlier holders have gone', { reply })
    fresh.close()
  })

  t.test('owner type: a document that names another owner by the time its snapshot is read is refused, never sent', async (t) => {
    await write('mt_doc_usersettings', 'race', { userId: 'user-1', secret: 'user-1 data' })
    const c = await open(wsUrl, 'user-1')
    let reached!: () => void
    const atGate = new Promise<void>((resolve) => { reached = resolve })
    let open_!: () => void
    gate = { id: 'race', reached, wait: new Promise<void>((resolve) => { open_ = resolve }) }
    const id = 'own1'
    c.send({ type: 'subscribe', id, data: { entityType: 'UserSettings', entityId: 'race', snapshot: true } })
    await atGate
    // the owner check passed (user-1 owned it); the document changes hands before the snapshot is read
    await write('mt_doc_usersettings', 'race', { userId: 'user-2', secret: 'user-2 private data' })
    open_()
    const reply = await c.next((m) => m.id === id)
    gate = null
    t.notMatch(reply, { type: 'subscribed', data: { snapshot: { payload: { userId: 'user-2' } } } }, 'user-1 must not receive user-2\'s document', { reply })
    // and the batch form
    await write('mt_doc_usersettings', 'race', { userId: 'user-1', secret: 'user-1 data' })
    const c2 = await open(wsUrl, 'user-1')
    let reached2!: () => void
    const atGate2 = new Promise<void>((resolve) => { reached2 = resolve })
    let open2!: () => void
    gate = { id: 'race', reached: reached2, wait: new Promise<void>((resolve) => { open2 = resolve }) }
    c2.send({ type: 'subscribe', id: 'own2', data: { entityType: 'UserSettings', entityIds: ['race'], snapshot: true } })
    await atGate2
    await write('mt_doc_usersettings', 'race', { userId: 'user-2', secret: 'user-2 private data' })
    open2()
    const many = await c2.next((m) => m.id === 'own2')
    gate = null
    t.notOk(JSON.stringify(many).includes('user-2 private data'), 'the batch reply must not carry user-2\'s document', { many })
  })

  t.test('bad input for the database is a bad_request, not a retryable internal_error', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100 })
    const c = await open(other)
    const nul = await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'a\u0000b' }, snapshot: true })
    t.match(nul, { data: { code: WireError.badRequest } }, 'a where value with U+0000 (jsonb refuses it)', { nul })
    const surrogate = await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: '\ud83d' } })
    t.not(surrogate.data?.code, WireError.internal, 'a where value with a lone surrogate', { surrogate })
    // 2^53 + 1 reaches the server as 2^53: the read would miss a document holding it, the live matcher take it
    await sql.query('INSERT INTO mt_doc_player (id, data) VALUES (\'huge\', \'{"teamId":"huge","caps":9007199254740993}\')')
    c.send('{"type":"subscribe","id":"huge","data":{"entityType":"Player","entityId":"*","where":{"caps":9007199254740993},"snapshot":true}}')
    t.match(await c.next((m) => m.id === 'huge'), { type: 'subscription_error', data: { code: WireError.badRequest } }, 'an integer a JS number does not hold exactly')
    t.equal(app.changefeed.stats().filters.groups, 0, 'no filter left behind')
    // bigint id column: an id that is a number too large for it
    await sql.query('INSERT INTO mt_doc_longdoc (id, data) VALUES (7, \'{"v":7}\')')
    const one = await ask(c, 'subscribe', { entityType: 'LongDoc', entityId: 'abc', snapshot: true })
    t.match(one, { type: 'subscribed', data: { snapshot: { payload: null } } }, 'not a number: no document')
    const big = await ask(c, 'subscribe', { entityType: 'LongDoc', entityId: '99999999999999999999', snapshot: true })
    t.match(big, { type: 'subscribed', data: { snapshot: { payload: null } } }, 'out of the bigint range: no document either', { big })
    const batch = await ask(c, 'subscribe', { entityType: 'LongDoc', entityIds: ['7', '99999999999999999999'], snapshot: true })
    t.match(batch, { type: 'subscribed', data: { subscribed: ['7', '99999999999999999999'], snapshots: { 7: { payload: { v: 7 } } } } }, 'one bad id does not fail the batch', { batch })
    // uuid column
    const guid = '0b7f3c1e-3f1a-4c55-9a9e-4f3b5b0b2d11'
    await sql.query('INSERT INTO mt_doc_guiddoc (id, data) VALUES ($1, \'{"v":1}\')', [guid])
    const g = await ask(c, 'subscribe', { entityType: 'GuidDoc', entityIds: ['not-a-uuid', guid.toUpperCase(), guid], snapshot: true })
    t.match(g, { type: 'subscribed', data: { snapshots: { 'not-a-uuid': { payload: null }, [guid]: { payload: { v: 1 } } } } }, 'uuid ids', { g })
    t.comment(`upper-case uuid snapshot: ${JSON.stringify(g.data?.snapshots?.[guid.toUpperCase()])}`)
    await pong(c)
  })

  /** Frames in arrival order, batches flattened. */
  const framesOf = (c: TestClient): Frame[] => c.raw.flatMap((text) => {
    const m = JSON.parse(text) as Frame
    return m.type === 'batch' ? (m.data as Frame[]) : [m]
  })

  t.test('batch snapshots under a writer hammering several entities: snapshot + notifications = every later change once', async (t) => {
    const IDS = ['hot-0', 'hot-1', 'hot-2', 'hot-3', 'hot-4']
    for (const id of IDS) await write('mt_doc_hot', id, { n: 0 })
    const FINAL = 240
    /** entity → the steps that wrote it */
    const writes = new Map<string, number[]>(IDS.map((id) => [id, [0]]))
    const writerDb = new pg.Client({ connectionString: url })
    await writerDb.connect()
    t.teardown(async () => await writerDb.end())
    const clients = await Promise.all(Array.from({ length: 6 }, async () => await open()))
    const writer = (async () => {
      for (let k = 1; k <= FINAL; k++) {
        const touched = k % 7 === 0 ? [IDS[k % 5], IDS[(k + 2) % 5]] : [IDS[k % 5]]
        await writerDb.query('BEGIN')
        for (const id of touched) await write('mt_doc_hot', id, { n: k }, writerDb)
        await writerDb.query('COMMIT')
        for (const id of touched) writes.get(id)!.push(k)
      }
    })()
    const replies: Array<Array<{ at: number, snapshots: Record<string, { payload: { n: number } }> }>> = clients.map(() => [])
    for (const [i, c] of clients.entries()) {
      await until(() => writes.get('hot-0')!.length > i * 6 + 2, 10_000)
      const id = `b${i}`
      c.send({ type: 'subscribe', id, data: { entityType: 'Hot', entityIds: IDS, snapshot: true } })
      const reply = await c.next((m) => m.id === id)
      t.same(reply.data.errors, [])
      replies[i].push({ at: c.raw.findIndex((r) => r.includes(`"id":"${id}"`)), snapshots: reply.data.snapshots })
    }
    // one client subscribes again (same ids, snapshot) while the writes go on
    await until(() => writes.get('hot-0')!.length > 40, 10_000)
    const again = await ask(clients[0], 'subscribe', { entityType: 'Hot', entityIds: [...IDS].reverse(), snapshot: true })
    replies[0].push({ at: clients[0].raw.findIndex((r) => r.includes(`"id":"${again.id as string}"`)), snapshots: again.data.snapshots })
    await writer
    for (const [i, c] of clients.entries()) {
      t.ok(await until(() => IDS.every((id) => {
        const last = writes.get(id)!.at(-1)!
        return framesOf(c).some((m) => m.type === 'notification' && m.data.entityId === id && m.data.payload.n === last) ||
          replies[i].at(-1)!.snapshots[id].payload.n === last
      }), 10_000), `client ${i} has every entity's last write`)
      const raw = framesOf(c)
      const { at, snapshots } = replies[i].at(-1)!
      for (const id of IDS) {
        const start = snapshots[id].payload.n
        const seen = raw.slice(at + 1).filter((m) => m.type === 'notification' && m.data.entityId === id).map((m) => m.data.payload.n as number)
        t.same(seen, writes.get(id)!.filter((k) => k > start), `client ${i}, ${id}: snapshot at ${start}, then every later write once, in order`)
      }
    }
    for (const c of clients) c.close()
    t.ok(await until(() => app.changefeed.stats().subscriptions.byType.Hot === undefined), 'no Hot subscription left', { subscriptions: app.changefeed.stats().subscriptions })
  })

  t.test('filter snapshots under a writer moving entities in and out: each client\'s state and frames agree with the writes', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100 })
    const IDS = ['fl-0', 'fl-1', 'fl-2', 'fl-3', 'fl-4', 'fl-5']
    const FINAL = 240
    const inAt = (k: number): boolean => ((k * 2654435761) >>> 0) % 3 !== 0
    /** step → the entities it wrote, and whether they match */
    const steps: Array<{ k: number, ids: string[], in: boolean }> = [{ k: 0, ids: IDS, in: false }]
    for (const id of IDS) await write('mt_doc_hot', id, { grp: 'hammer', n: 0, in: false })
    const writerDb = new pg.Client({ connectionString: url })
    await writerDb.connect()
    t.teardown(async () => await writerDb.end())
    const where = { grp: 'hammer', in: true }
    const clients = await Promise.all(Array.from({ length: 6 }, async () => await open(other)))
    let done = 0
    const writer = (async () => {
      for (let k = 1; k <= FINAL; k++) {
        const ids = k % 5 === 0 ? [IDS[k % 6], IDS[(k + 3) % 6]] : [IDS[k % 6]]
        await writerDb.query('BEGIN')
        for (const id of ids) await write('mt_doc_hot', id, { grp: 'hammer', n: k, in: inAt(k) }, writerDb)
        await writerDb.query('COMMIT')
        steps.push({ k, ids, in: inAt(k) })
        done = k
      }
    })()
    const starts: Array<{ at: number, members: Map<string, number> }> = []
    for (const [i, c] of clients.entries()) {
      await until(() => done > i * 30 + 5, 10_000)
      const id = `f${i}`
      // spelled differently: the same filter
      c.send({ type: 'subscribe', id, data: { entityType: 'Hot', entityId: '*', where: i % 2 === 0 ? where : { in: [true, true], grp: ['hammer'] }, snapshot: true } })
      const reply = await c.next((m) => m.id === id, 10_000)
      t.equal(reply.type, 'subscribed', `client ${i} subscribed`, { reply })
      starts.push({ at: c.raw.findIndex((r) => r.includes(`"id":"${id}"`)), members: new Map(reply.data.snapshot.entities.map((e: { entityId: string, payload: { n: number } }) => [e.entityId, e.payload.n])) })
    }
    await writer
    t.equal(app.changefeed.stats().filters.groups, 1, 'one shared group')
    const finalMembers = new Map<string, number>()
    for (const s of steps) for (const id of s.ids) { if (s.in) finalMembers.set(id, s.k); else finalMembers.delete(id) }
    for (const [i, c] of clients.entries()) {
      const apply = (): Map<string, number> => {
        const members = new Map(starts[i].members)
        for (const m of framesOf(c).slice(starts[i].at + 1)) {
          if (m.type !== 'notification') continue
          if (m.data.changeType === 'left' || m.data.changeType === 'deleted') members.delete(m.data.entityId)
          else members.set(m.data.entityId, m.data.payload.n)
        }
        return members
      }
      t.ok(await until(() => JSON.stringify([...apply()].sort()) === JSON.stringify([...finalMembers].sort()), 10_000), `client ${i}: its state ends as the database's`, { got: [...apply()].sort(), want: [...finalMembers].sort() })
      // exactly: some prefix P of the steps is what the snapshot saw, and the frames are what the steps after P make
      const got = framesOf(c).slice(starts[i].at + 1).filter((m) => m.type === 'notification').map((m) => `${m.data.entityId}:${m.data.changeType as string}:${m.data.payload?.n as number}`)
      const candidates: string[][] = []
      for (let p = 0; p < steps.length; p++) {
        const members = new Map<string, number>()
        for (const s of steps.slice(0, p + 1)) for (const id of s.ids) { if (s.in) members.set(id, s.k); else members.delete(id) }
        if (JSON.stringify([...members].sort()) !== JSON.stringify([...starts[i].members].sort())) continue
        const expected: string[] = []
        for (const s of steps.slice(p + 1)) {
          for (const id of s.ids) {
            const was = members.has(id)
            if (s.in) { expected.push(`${id}:${was ? 'updated' : 'entered'}:${s.k}`); members.set(id, s.k) } else if (was) { expected.push(`${id}:left:${s.k}`); members.delete(id) }
          }
        }
        candidates.push(expected)
      }
      t.ok(candidates.some((e) => JSON.stringify(e) === JSON.stringify(got)), `client ${i}: every change once, none before the snapshot`, { got: got.slice(0, 30), nearest: candidates[0]?.slice(0, 30), candidates: candidates.length })
    }
    for (const c of clients) c.close()
    t.ok(await until(() => { const f = app.changefeed.stats().filters; return f.groups === 0 && f.subscriptions === 0 }), 'the filter is gone with its sockets')
  })

  t.test('after a gap, a filter that grew past maxFilterMatches (live, allowed) reads its members again and goes on delivering', async (t) => {
    const { app, url: other } = await startApp(t, {
      databases: [{ name: 'gapdb', url }],
      entities,
      limits: { maxFilterMatches: 3, feedMessagesPerSecond: 100_000 }
    })
    for (const id of ['gp-1', 'gp-2']) await write('mt_doc_player', id, { teamId: 'gap' })
    const c = await open(other)
    const reply = await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'gap' }, snapshot: true })
    t.equal(reply.data.snapshot.entities.length, 2)
    // the filter grows live past the limit: that is allowed
    for (const id of ['gp-3', 'gp-4']) {
      await write('mt_doc_player', id, { teamId: 'gap' })
      t.match((await c.next(isNotification('Player', id))).data, { changeType: 'entered' })
    }
    const reconnects = app.changefeed.stats().listeners.gapdb.reconnects
    await adminQuery('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE \'changefeed-listener:gapdb:%\'', [dbName])
    t.match(await c.next((m) => m.type === 'resync', 10_000), { data: { entityType: 'Player' } }, 'the gap is announced')
    t.ok(await until(() => app.changefeed.stats().listeners.gapdb.reconnects > reconnects && app.changefeed.health().ready, 10_000), 'the listener is back')
    const readsBefore = app.changefeed.stats().filters.reads
    // the filter reads its members again after the gap (changes meanwhile are in that read): once it has, a change
    // of a member reaches the socket again
    let n = 0
    t.ok(await until(async () => {
      await write('mt_doc_player', 'gp-2', { teamId: 'gap', n: ++n })
      return await until(() => c.messages.some((m) => isNotification('Player', 'gp-2')(m) && m.data.payload.n === n), 500)
    }, 10_000), 'the filter delivers again after the gap')
    c.messages.length = 0
    await write('mt_doc_player', 'gp-1', { teamId: 'elsewhere' })
    await write('mt_doc_player', 'gp-5', { teamId: 'gap' })
    const marker = await open(other)
    await marker.subscribe('Player', 'gp-5')
    await write('mt_doc_player', 'gp-5', { teamId: 'gap', marker: true })
    await marker.next(isNotification('Player', 'gp-5'))
    let frames: Frame[] = []
    const delivered = await until(() => { frames = c.messages.filter((m) => m.type === 'notification'); return frames.length >= 3 }, 4000)
    t.ok(delivered, 'the filter\'s watcher hears gp-1 leave and gp-5 enter after the gap', { frames: frames.map((m) => [m.data.entityId, m.data.changeType]), reads: app.changefeed.stats().filters.reads - readsBefore })
    t.comment(`membership reads since the gap: ${app.changefeed.stats().filters.reads - readsBefore} (a retry each second)`)
    const joiner = await open(other)
    const joined = await ask(joiner, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'gap' } })
    t.comment(`a new socket asking for the same filter (no snapshot): ${JSON.stringify(joined)}`)
  })

  t.test('a role with fewer rights: SELECT revoked on the table gives coded errors, the server keeps running, nothing leaks', async (t) => {
    const roUrl = await freshDatabase(t, 'attack_ro')
    const r = await role(t, roUrl, 'attack_ro', ['public'])
    const admin = await sqlClient(t, roUrl)
    const rdb = await r.client()
    await rdb.query(martenTableSql('mt_doc_secret'))
    await write('mt_doc_secret', 's-1', { teamId: 'x' }, rdb)
    const { app, url: other } = await startApp(t, {
      databases: [{ name: 'ro', url: r.url }],
      entities: { Secret: { access: 'public', payload: 'full', feed: true } },
      limits: { feedMessagesPerSecond: 100_000 }
    })
    const c = await open(other)
    t.equal((await ask(c, 'subscribe', { entityType: 'Secret', entityId: 's-1', snapshot: true })).type, 'subscribed', 'before the revoke')
    await admin.query(`REVOKE SELECT ON mt_doc_secret FROM ${r.name}`)
    const one = await ask(c, 'subscribe', { entityType: 'Secret', entityId: 's-2', snapshot: true })
    t.match(one, { type: 'subscription_error', data: { code: String } }, 'single snapshot: a coded error', { one })
    const many = await ask(c, 'subscribe', { entityType: 'Secret', entityIds: ['s-2', 's-3'], snapshot: true })
    t.match(many, { type: 'subscribed', data: { subscribed: [], errors: [{ code: String }, { code: String }] } }, 'batch: coded errors', { many })
    const f = await ask(c, 'subscribe', { entityType: 'Secret', entityId: '*', where: { teamId: 'x' }, snapshot: true })
    t.match(f, { type: 'subscription_error' }, 'filter: a coded error', { f })
    const f2 = await ask(c, 'subscribe', { entityType: 'Secret', entityId: '*', where: { teamId: 'x' } })
    t.match(f2, { type: 'subscription_error' }, 'filter without snapshot (the membership read): a coded error', { f2 })
    t.comment(JSON.stringify({ one: one.data.code, many: many.data.errors.map((e: { code: string }) => e.code), f: f.data.code, f2: f2.data.code }))
    await pong(c)
    t.same(app.changefeed.stats().filters, { groups: 0, subscriptions: 0, reads: app.changefeed.stats().filters.reads }, 'no filter held')
    t.same(app.changefeed.stats().subscriptions.byType, { Secret: 1 }, 'only the earlier s-1 subscription')
    t.notOk(c.messages.some((m) => m.type === 'notification'))
    // the subscription from before goes on
    await write('mt_doc_secret', 's-1', { teamId: 'y' }, admin)
    t.match((await c.next(isNotification('Secret', 's-1'))).data, { payload: { teamId: 'y' } }, 'the earlier subscription still delivers')
    await admin.query(`GRANT SELECT ON mt_doc_secret TO ${r.name}`)
    t.match(await ask(c, 'subscribe', { entityType: 'Secret', entityId: '*', where: { teamId: 'y' }, snapshot: true }), { type: 'subscribed', data: { snapshot: { entities: [{ entityId: 's-1' }] } } }, 'granted again: it works')
    c.close()
    t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0 && app.changefeed.stats().filters.groups === 0), 'all released')
  })

  t.test('filters on a delta type: full frames, entered/updated/left, alongside a patch subscriber', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100 })
    const venue = 'Stadium '.repeat(100)
    await write('mt_doc_match', 'dm-1', { venue, league: 'L1', home: 0 })
    const single = await open(other)
    const s = await ask(single, 'subscribe', { entityType: 'Match', entityId: 'dm-1', snapshot: true })
    t.equal(s.type, 'subscribed')
    const c = await open(other)
    const reply = await ask(c, 'subscribe', { entityType: 'Match', entityId: '*', where: { league: 'L1' }, snapshot: true })
    t.match(reply.data.snapshot.entities, [{ entityId: 'dm-1', payload: { home: 0 } }])
    await write('mt_doc_match', 'dm-1', { venue, league: 'L1', home: 3 })
    t.comment(`the single subscriber got payloadType ${(await single.next(isNotification('Match', 'dm-1'))).data.payloadType as string}`)
    t.match((await c.next(isNotification('Match', 'dm-1'))).data, { changeType: 'updated', payload: { home: 3 } }, 'the filter a full frame')
    await write('mt_doc_match', 'dm-1', { venue, league: 'L2', home: 3 })
    t.match((await c.next(isNotification('Match', 'dm-1'))).data, { changeType: 'left' })
    await write('mt_doc_match', 'dm-1', { venue, league: 'L1', home: 4 })
    t.match((await c.next(isNotification('Match', 'dm-1'))).data, { changeType: 'entered', payload: { home: 4 } })
    t.notOk(c.raw.some((r) => r.includes('"patch"')), 'no patch frame reached the filter')
    t.equal(app.changefeed.stats().filters.groups, 1)
  })

  t.test('1000-id batches and big where lists: limits give coded errors, the server stays responsive', async (t) => {
    // with the default limits.maxMessageBytes (4096) a request of 1000 ids cannot be sent: the socket is closed (1009)
    const dflt = await open(wsUrl)
    dflt.send({ type: 'subscribe', id: 'k', data: { entityType: 'Player', entityIds: Array.from({ length: 300 }, (_, i) => `default-${i}`) } })
    t.comment(`300 ids with the default maxMessageBytes: ${JSON.stringify(await Promise.race([dflt.closed, dflt.next((m) => m.id === 'k')]))}`)
    const { app, url: other } = await makeApp({ maxSubscriptionsPerConnection: 1000, subscribeRatePerSecond: 20, maxFiltersPerType: 100, maxMessageBytes: 1_000_000 })
    const c = await open(other)
    const probe = await open(other)
    const ids = Array.from({ length: 1000 }, (_, i) => `big-${i}`)
    for (const id of ids.slice(0, 50)) await write('mt_doc_player', id, { teamId: 'big' })
    const started = Date.now()
    c.send({ type: 'subscribe', id: 'k', data: { entityType: 'Player', entityIds: ids, snapshot: true } })
    await pong(probe)
    const pingMs = Date.now() - started
    const reply = await c.next((m) => m.id === 'k', 15_000)
    t.equal(reply.data.subscribed.length, 1000, `1000 subscribed in ${Date.now() - started} ms (a ping meanwhile: ${pingMs} ms)`)
    t.equal(Object.keys(reply.data.snapshots).length, 1000)
    t.equal(app.changefeed.stats().subscriptions.active, 1000)
    t.match(await ask(c, 'subscribe', { entityType: 'Player', entityIds: [...ids, 'one-more'] }), { type: 'error', data: { code: WireError.badRequest } }, '1001 ids: bad_request')
    const u = await ask(probe, 'subscribe', { entityType: 'Player', entityIds: Array.from({ length: 1000 }, () => 'same') })
    t.match(u, { type: 'subscribed', data: { subscribed: ['same'] } }, '1000 copies of one id: one subscription')
    const where = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`k${i}.deep.path`, Array.from({ length: 100 }, (_, j) => `value-${j}-${'v'.repeat(400)}`)]))
    const w = await ask(probe, 'subscribe', { entityType: 'Player', entityId: '*', where, snapshot: true }, 15_000).catch((err: Error) => ({ type: 'timeout', data: err.message }))
    t.comment(`8 x 100 x 400-char where: ${JSON.stringify(w).slice(0, 200)}`)
    await pong(probe)
    c.close()
    probe.close()
    t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0 && app.changefeed.stats().filters.groups === 0, 10_000), 'all released', { s: app.changefeed.stats().subscriptions, f: app.changefeed.stats().filters })
  })

  t.test('conjoined tenancy: snapshots and filters per tenant', async (t) => {
    const squad: DocumentOptions = { schema: 'public', name: 'squad', idType: 'string', tenancy: 'conjoined' }
    await sql.query(documentSchema(squad))
    const { app, url: other } = await startApp(t, {
      databases: [{ name: 'main', url }],
      entities: { Squad: { access: 'public', payload: 'full', feed: true } },
      auth: { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } },
      limits: { feedMessagesPerSecond: 100_000 }
    })
    await sql.query(upsertCall(squad, 'upsert', { id: 's-1', doc: { team: 'a', who: 'Red' }, tenantId: 'Red' }).text, upsertCall(squad, 'upsert', { id: 's-1', doc: { team: 'a', who: 'Red' }, tenantId: 'Red' }).values)
    const up = async (id: string, doc: object, tenantId: string): Promise<void> => { const c = upsertCall(squad, 'upsert', { id, doc, tenantId }); await sql.query(c.text, c.values) }
    await up('s-1', { team: 'a', who: 'Blue' }, 'Blue')
    const anon = await open(other)
    t.match(await ask(anon, 'subscribe', { entityType: 'Squad', entityId: 's-1', snapshot: true }), { data: { code: WireError.badRequest } }, 'every tenant\'s s-1: no one state')
    t.match(await ask(anon, 'subscribe', { entityType: 'Squad', entityId: 's-1', tenantId: 'Red', snapshot: true }), { data: { tenantId: 'Red', snapshot: { payload: { who: 'Red' } } } })
    t.match(await ask(anon, 'subscribe', { entityType: 'Squad', entityIds: ['s-1', 's-2'], tenantId: 'Blue', snapshot: true }), { data: { tenantId: 'Blue', snapshots: { 's-1': { payload: { who: 'Blue' } }, 's-2': { payload: null } } } })
    const all = await ask(anon, 'subscribe', { entityType: 'Squad', entityId: '*', where: { team: 'a' }, snapshot: true })
    t.same(all.data.snapshot.entities.map((e: { entityId: string, tenantId: string }) => `${e.tenantId}/${e.entityId}`).sort(), ['Blue/s-1', 'Red/s-1'], 'every tenant\'s matches, tagged')
    const red = await open(`${other}?token=${signHs256({ sub: 'r', exp: now() + 600, org: { tenant: 'Red' } }, SECRET)}`)
    const redF = await ask(red, 'subscribe', { entityType: 'Squad', entityId: '*', where: { team: 'a' }, snapshot: true })
    t.same(redF.data.snapshot.entities.map((e: { entityId: string, tenantId: string }) => `${e.tenantId}/${e.entityId}`), ['Red/s-1'], 'a Red user: Red\'s only')
    await up('s-1', { team: 'b', who: 'Blue' }, 'Blue')
    t.match((await anon.next((m) => m.type === 'notification' && m.data.subscriptionId !== undefined)).data, { tenantId: 'Blue', entityId: 's-1', changeType: 'left' }, 'Blue\'s s-1 left; Red\'s stays')
    await up('s-1', { team: 'a', who: 'Red', v: 2 }, 'Red')
    t.match((await anon.next((m) => m.type === 'notification' && m.data.subscriptionId !== undefined)).data, { tenantId: 'Red', changeType: 'updated' })
    t.match((await red.next((m) => m.type === 'notification')).data, { tenantId: 'Red', changeType: 'updated', payload: { v: 2 } })
    t.notOk(red.raw.some((r) => r.includes('"Blue"')), 'Red never hears of Blue')
    anon.close()
    red.close()
    t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0 && app.changefeed.stats().filters.groups === 0))
  })

  t.test('a refused snapshot re-request ends the subscription the socket already had, and its reply says so', async (t) => {
    const { app, url: other } = await makeApp({ replaysPerIpPerSecond: 0.1 })
    await write('mt_doc_counter', 'keep-1', { n: 1 })
    await write('mt_doc_counter', 'keep-2', { n: 1 })
    const c = await open(other)
    t.equal((await ask(c, 'subscribe', { entityType: 'Counter', entityId: 'keep-1' })).type, 'subscribed')
    t.equal((await ask(c, 'subscribe', { entityType: 'Counter', entityId: 'keep-2' })).type, 'subscribed')
    // the burst is one read (10 s at 0.1/s): spend it
    t.match(await ask(c, 'subscribe', { entityType: 'Counter', entityId: 'other', snapshot: true }), { type: 'subscribed', data: { snapshot: {} } })
    const batch = await ask(c, 'subscribe', { entityType: 'Counter', entityIds: ['keep-1'], snapshot: true })
    t.match(batch, { data: { errors: [{ entityId: 'keep-1', code: WireError.rateLimited }] } }, 'the batch re-request is refused')
    const single = await ask(c, 'subscribe', { entityType: 'Counter', entityId: 'keep-2', snapshot: true })
    t.match(single, { type: 'subscription_error', data: { code: WireError.rateLimited } }, 'the single re-request is refused')
    await write('mt_doc_counter', 'keep-1', { n: 2 })
    await write('mt_doc_counter', 'keep-2', { n: 2 })
    const marker = await open(other)
    await marker.subscribe('Counter', 'keep-2')
    await write('mt_doc_counter', 'keep-2', { n: 3 })
    await marker.next((m) => m.type === 'notification' && m.data.payload.n === 3)
    // a subscription_error means the socket does not hold the subscription: the client subscribes again (the SDK does).
    // (The first writes may still reach it: they committed before it subscribed, their notifications after.)
    const after = (id: string) => (m: Frame): boolean => isNotification('Counter', id)(m) && m.data.payload.n >= 2
    t.notOk(c.messages.some(after('keep-1')), 'keep-1 ended with its refusal')
    t.notOk(c.messages.some(after('keep-2')), 'keep-2 ended with its refusal')
    t.equal(app.changefeed.stats().subscriptions.byType.Counter, 2, 'what is left: the spent snapshot\'s subscription and the marker\'s')
  })

  t.test('the same filter from two sockets while the first read is slow; the first socket closes meanwhile', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100 })
    await write('mt_doc_player', 'sl-1', { teamId: 'slow' })
    const warm = await open(other)
    await ask(warm, 'subscribe', { entityType: 'Player', entityId: 'sl-1', snapshot: true })
    warm.close()
    const locker = new pg.Client({ connectionString: url })
    await locker.connect()
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE mt_doc_player IN ACCESS EXCLUSIVE MODE')
    const a = await open(other)
    const b = await open(other)
    const reads = app.changefeed.stats().filters.reads
    a.send({ type: 'subscribe', id: 'a', data: { entityType: 'Player', entityId: '*', where: { teamId: 'slow' }, snapshot: true } })
    t.ok(await until(() => app.changefeed.stats().filters.reads > reads), 'the creator\'s read is in flight')
    b.send({ type: 'subscribe', id: 'b', data: { entityType: 'Player', entityId: '*', where: { teamId: 'slow' }, snapshot: true } })
    await pong(b)
    a.close()
    t.ok(await until(() => app.changefeed.stats().filters.subscriptions === 1), 'only b holds the filter')
    await locker.query('COMMIT')
    await locker.end()
    const reply = await b.next((m) => m.id === 'b', 10_000)
    t.match(reply, { type: 'subscribed', data: { snapshot: { entities: [{ entityId: 'sl-1' }] } } })
    await write('mt_doc_player', 'sl-2', { teamId: 'slow' })
    t.match((await b.next(isNotification('Player', 'sl-2'))).data, { changeType: 'entered' })
    t.equal(b.raw.filter((r) => r.includes('"id":"b"')).length, 1, 'one reply')
    b.close()
    t.ok(await until(() => { const f = app.changefeed.stats().filters; return f.groups === 0 && f.subscriptions === 0 && app.changefeed.stats().subscriptions.active === 0 }), 'all released')
  })

  t.test('fair shares: one address cannot take more than its share of filters, another still gets them, closed sockets give theirs back', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100, maxFiltersPerConnection: 2, maxFiltersPerIp: 4 })
    const from = async (localAddress: string): Promise<TestClient> => {
      const c = await TestClient.open(other, { localAddress })
      t.teardown(() => c.close())
      return c
    }
    const filter = async (c: TestClient, teamId: string): Promise<string> => {
      const reply = await ask(c, 'subscribe', { entityType: 'Player', entityId: '*', where: { teamId } })
      return reply.type === 'subscribed' ? 'subscribed' : reply.data.code
    }
    const groups = (): number => app.changefeed.stats().filters.groups
    const [a, b, c] = [await from('127.0.0.1'), await from('127.0.0.1'), await from('127.0.0.1')]
    t.same([await filter(a, 'f1'), await filter(a, 'f2'), await filter(a, 'f3')], ['subscribed', 'subscribed', WireError.tooManyFilters], 'a connection: maxFiltersPerConnection')
    t.same([await filter(b, 'f3'), await filter(b, 'f4'), await filter(c, 'f5')], ['subscribed', 'subscribed', WireError.tooManyFilters], 'the sockets of an address: maxFiltersPerIp different filters')
    t.equal(await filter(c, 'f1'), 'subscribed', 'a filter the address holds already counts once')
    const d = await from('127.0.0.2')
    t.same([await filter(d, 'g1'), await filter(d, 'g2')], ['subscribed', 'subscribed'], 'another address still gets filters')

    // a closes: f2 is given back (f1 stays: c holds it)
    a.close()
    t.ok(await until(() => groups() === 5), 'the closed socket\'s filter is gone')
    // a socket that closes while its filter is being joined (its read waits for a lock) gives its place back too
    const locker = new pg.Client({ connectionString: url })
    await locker.connect()
    t.teardown(async () => await locker.end().catch(() => {}))
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE mt_doc_player IN ACCESS EXCLUSIVE MODE')
    const e = await from('127.0.0.1')
    e.send({ type: 'subscribe', id: 'mid', data: { entityType: 'Player', entityId: '*', where: { teamId: 'f6' } } })
    t.ok(await until(() => groups() === 6), 'its filter is being read')
    const active = app.changefeed.stats().connections.active
    e.close()
    t.ok(await until(() => app.changefeed.stats().connections.active === active - 1), 'closed mid-join')
    await locker.query('COMMIT')
    t.ok(await until(() => groups() === 5), 'its filter is gone')
    t.equal(await filter(c, 'f5'), 'subscribed', 'the address has its places back (f1, f3, f4, f5)')
    const f = await from('127.0.0.1')
    t.equal(await filter(f, 'f7'), WireError.tooManyFilters, 'and is at its share again')
    t.equal((await ask(b, 'unsubscribe', { entityType: 'Player', entityId: '*', where: { teamId: 'f3' } })).type, 'unsubscribed')
    t.equal(await filter(f, 'f7'), 'subscribed', 'an unsubscribe gives a place back')
  })

  t.test('every request gets exactly one reply, whatever the mix; nothing leaks when sockets close mid-flight', async (t) => {
    const { app, url: other } = await makeApp({ maxFiltersPerType: 100, subscribeRatePerSecond: 1000, maxSubscriptionsPerConnection: 50 })
    const sockets = await Promise.all(Array.from({ length: 6 }, async () => await open(other)))
    const requests = (c: TestClient, s: number): string[] => {
      const ids: string[] = []
      for (let i = 0; i < 40; i++) {
        const id = `r${s}-${i}`
        ids.push(id)
        const e = `mix-${i % 7}`
        const data = [
          { entityType: 'Player', entityId: e, snapshot: true },
          { entityType: 'Player', entityIds: [e, `mix-${(i + 1) % 7}`, 'mix-x'], snapshot: i % 2 === 0 },
          { entityType: 'Player', entityId: '*', where: { teamId: `t${i % 3}` }, snapshot: i % 2 === 0 },
          { entityType: 'UserSettings', entityIds: ['u1', 'u2'], snapshot: true },
          { entityType: 'Nope', entityId: 'x' },
          { entityType: 'Player', entityId: e }
        ][i % 6]
        c.send({ type: i % 5 === 4 ? 'unsubscribe' : 'subscribe', id, data: i % 5 === 4 ? { entityType: 'Player', entityId: e } : data })
      }
      return ids
    }
    const writer = (async () => { for (let k = 0; k < 60; k++) await write('mt_doc_player', `mix-${k % 7}`, { teamId: `t${k % 3}`, k }) })()
    const sent = sockets.map((c, s) => requests(c, s))
    // half of the sockets close while their requests run
    for (const c of sockets.slice(3)) c.close()
    await writer
    for (const [s, c] of sockets.slice(0, 3).entries()) {
      t.ok(await until(() => sent[s].every((id) => c.messages.some((m) => m.id === id)), 10_000), `socket ${s}: every request answered`)
      const counts = new Map<string, number>()
      for (const m of framesOf(c)) if (m.id !== undefined) counts.set(String(m.id), (counts.get(String(m.id)) ?? 0) + 1)
      t.same([...counts].filter(([, n]) => n !== 1), [], `socket ${s}: one reply each`)
      t.notOk(framesOf(c).some((m) => m.data?.code === WireError.internal), `socket ${s}: no internal_error`)
    }
    for (const c of sockets) c.close()
    t.ok(await until(() => { const st = app.changefeed.stats(); return st.subscriptions.active === 0 && st.filters.groups === 0 && st.filters.subscriptions === 0 && st.connections.active === 0 }, 10_000), 'all released', { stats: app.changefeed.stats().subscriptions, filters: app.changefeed.stats().filters })
  })
})
