/**
 * Activity feeds (type-wide subscriptions), watcher counts, and origin tagging for collaborative editing.
 */
import t from 'tap'
import WebSocket from 'ws'
import pg from 'pg'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { TestClient, isNotification, type Frame } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { ChangefeedClient, type Notification } from '../../../lib/client/index.js'
import { tagOrigin, WireError } from '../../../lib/index.js'
import { until } from '../../helpers/wait.js'

const SECRET = 'feeds-test-secret-0123456789abcdef'
const url = await freshDatabase(t, 'feeds')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_fixture'))
await sql.query(martenTableSql('mt_doc_team'))

const { app, url: wsUrl } = await startApp(t, {
  databases: [{ name: 'ballr', url }],
  entities: {
    Fixture: { access: 'public', payload: 'full', feed: true },
    Team: { access: 'public' },
    UserSettings: { access: 'owner', feed: true },
    AdminReport: { access: 'admin', feed: true }
  },
  auth: { jwt: { secret: SECRET } },
  limits: { feedMessagesPerSecond: 5, feedBatchIntervalMs: 200, watcherCountIntervalMs: 200 }
})
const as = async (sub: string | null, roles: string[] = []): Promise<TestClient> => {
  const c = await TestClient.open(sub === null ? wsUrl : `${wsUrl}?token=${signHs256({ sub, roles, exp: now() + 600 }, SECRET)}`)
  t.teardown(() => c.close())
  return c
}

t.test('a feed subscriber of a public type receives every change of the type', async (t) => {
  const feed = await as(null)
  const single = await as(null)
  t.match(await feed.subscribe('Fixture', '*'), { type: 'subscribed', data: { subscriptionId: 'Fixture:*' } })
  await single.subscribe('Fixture', 'f-1')
  for (const id of ['f-1', 'f-2', 'f-3']) await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2)', [id, JSON.stringify({ id })])
  for (const id of ['f-1', 'f-2', 'f-3']) t.match((await feed.next(isNotification('Fixture', id))).data, { changeType: 'created', payload: { id } })
  t.equal((await single.next(isNotification('Fixture', 'f-1'))).data.entityId, 'f-1')
  // a marker: a change committed after the others, of an entity it also watches, arrives after anything more
  await single.subscribe('Fixture', 'f-marker')
  await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2)', ['f-marker', JSON.stringify({ id: 'f-marker' })])
  await single.next(isNotification('Fixture', 'f-marker'))
  t.same(single.messages.filter((m) => m.type === 'notification'), [], 'an entity subscriber gets only its entity')
})

t.test('a socket that watches an entity and its type\'s feed gets the change on each, the feed\'s frame naming its subscription', async (t) => {
  const both = await as(null)
  await both.subscribe('Fixture', 'f-both')
  await both.subscribe('Fixture', '*')
  await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2)', ['f-both', JSON.stringify({ id: 'f-both' })])
  const frames = [await both.next(isNotification('Fixture', 'f-both')), await both.next(isNotification('Fixture', 'f-both'))]
  const [feed, own] = [frames.find((f) => f.data.subscriptionId !== undefined), frames.find((f) => f.data.subscriptionId === undefined)]
  t.match(feed?.data, { subscriptionId: 'Fixture:*', changeType: 'created', payload: { id: 'f-both' } }, 'the feed\'s names it')
  t.match(own?.data, { changeType: 'created', payload: { id: 'f-both' } }, 'the entity\'s, as ever, names none')
  t.equal(feed?.data.position, own?.data.position, 'one change')

  // the SDK hands each subscription the change once
  const client = new ChangefeedClient({ url: wsUrl, WebSocket: WebSocket as never })
  t.teardown(() => client.destroy())
  const got: Record<string, string[]> = { entity: [], feed: [] }
  const created = app.changefeed.stats().subscriptions.created
  client.subscribe('Fixture', 'f-sdk', { onNotification: (n) => got.entity.push(n.changeType) })
  client.subscribe('Fixture', '*', { onNotification: (n) => { if (n.entityId === 'f-sdk' || n.entityId === 'f-sdk-end') got.feed.push(`${n.entityId} ${n.changeType}`) } })
  t.ok(await until(() => app.changefeed.stats().subscriptions.created === created + 2))
  await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2)', ['f-sdk', JSON.stringify({ id: 'f-sdk' })])
  await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2)', ['f-sdk-end', JSON.stringify({ id: 'f-sdk-end' })])
  t.ok(await until(() => got.feed.includes('f-sdk-end created')))
  t.same(got, { entity: ['created'], feed: ['f-sdk created', 'f-sdk-end created'] })
})

t.test('feeds only for types that opt in, and only for those who may view every entity', async (t) => {
  const anonymous = await as(null)
  const member = await as('user-1', ['Member'])
  const admin = await as('admin-1', ['Admin'])
  t.match(await member.subscribe('Team', '*'), { data: { code: WireError.forbidden } }, 'Team has no feed')
  t.match(await member.subscribe('UserSettings', '*'), { data: { code: WireError.forbidden } }, 'a member may not see every user\'s settings')
  t.match(await anonymous.subscribe('UserSettings', '*'), { data: { code: WireError.unauthenticated } })
  t.match(await member.subscribe('AdminReport', '*'), { data: { code: WireError.forbidden } })
  t.equal((await admin.subscribe('UserSettings', '*')).type, 'subscribed', 'an admin may')
  t.equal((await admin.subscribe('AdminReport', '*')).type, 'subscribed')
})

t.test('a busy feed is batched: fewer frames, every notification', async (t) => {
  const feed = await as(null)
  await feed.subscribe('Fixture', '*')
  feed.raw.length = 0
  for (let i = 0; i < 100; i++) await app.changefeed.publish({ entityType: 'Fixture', entityId: `burst-${i}`, changeType: 'updated', payload: { i } })
  // a marker published last: the feed keeps order, so once it is out, so is everything before it
  await app.changefeed.publish({ entityType: 'Fixture', entityId: 'end-of-burst', changeType: 'updated', payload: { i: -1 } })
  const delivered = (): Frame[] => feed.messages.flatMap((m) => m.type === 'batch' ? m.data as Frame[] : [m]).filter((m) => m.type === 'notification')
  t.ok(await until(() => delivered().some((m) => m.data.entityId === 'end-of-burst')), 'the marker arrives')
  const batches = feed.messages.filter((m) => m.type === 'batch')
  const notifications = delivered().filter((m) => String(m.data.entityId).startsWith('burst-'))
  t.equal(notifications.length, 100, 'all 100 notifications arrive')
  t.same(notifications.map((n) => n.data.payload.i), Array.from({ length: 100 }, (_, i) => i), 'in order')
  t.ok(batches.length > 0, `in batches (${feed.raw.length} frames for 100 notifications)`)
  t.ok(feed.raw.length < 20, 'a handful of frames')
})

t.test('watcher counts are pushed when they change', async (t) => {
  const counter = await as(null)
  counter.send({ type: 'subscribe', id: 'c', data: { entityType: 'Team', entityId: 'popular', watchers: true } })
  t.match(await counter.next((m) => m.type === 'watchers'), { data: { entityType: 'Team', entityId: 'popular', count: 1 } })
  const others = [await as(null), await as(null)]
  for (const o of others) await o.subscribe('Team', 'popular')
  t.equal((await counter.next((m) => m.type === 'watchers' && m.data.count === 3, 2000)).data.count, 3)
  others[0].close()
  t.equal((await counter.next((m) => m.type === 'watchers' && m.data.count === 2, 2000)).data.count, 2)
  const member = await as('user-2', ['Member'])
  member.send({ type: 'subscribe', id: 'x', data: { entityType: 'UserSettings', entityId: 'us-9', watchers: true } })
  t.equal((await member.next((m) => m.id === 'x')).type, 'subscription_error', 'no count without the right to watch')
  // a marker: a count it may have, asked for later, is sent after any count of the refused subscription would be
  member.send({ type: 'subscribe', id: 'y', data: { entityType: 'Team', entityId: 'counted', watchers: true } })
  t.match(await member.next((m) => m.type === 'watchers'), { data: { entityType: 'Team', entityId: 'counted', count: 1 } }, 'and nothing revealed')
  t.same(member.messages.filter((m) => m.type === 'watchers'), [], 'no other count')
})

t.test('an origin-tagged write reaches the other tab and is flagged for the writer\'s own tab', async (t) => {
  const tab = (origin: string): ChangefeedClient => {
    const c = new ChangefeedClient({ url: wsUrl, WebSocket: WebSocket as never, origin })
    t.teardown(() => c.destroy())
    return c
  }
  const [a, b] = [tab('tab-a'), tab('tab-b')]
  const got: Record<string, Notification[]> = { a: [], aAll: [], b: [] }
  a.subscribe('Team', 'team-1', { skipOwnWrites: true, onNotification: (n) => got.a.push(n) })
  a.subscribe('Team', 'team-1', { onNotification: (n) => got.aAll.push(n) })
  b.subscribe('Team', 'team-1', { skipOwnWrites: true, onNotification: (n) => got.b.push(n) })
  t.ok(await until(() => app.changefeed.stats().subscriptions.active >= 2))

  const writer = new pg.Client({ connectionString: url })
  await writer.connect()
  t.teardown(async () => await writer.end())
  await writer.query('BEGIN')
  await tagOrigin(writer, a.origin)
  await writer.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-1\', \'{"players":["New Kid"]}\')')
  await writer.query('COMMIT')
  t.ok(await until(() => got.b.length > 0 && got.aAll.length > 0))
  t.equal(got.b[0].origin, 'tab-a', 'the other tab gets it, with the writer\'s origin')
  t.equal(got.aAll[0].origin, a.origin, 'the writer\'s tab sees its own origin')
  t.same(got.a, [], 'and skips it where asked')
})
