/**
 * The wire protocol (lib/protocol/README.md) without a database: subscribe (idempotent), unsubscribe both ways, ping,
 * echoed ids, host publish, and every kind of bad input answered with a code while the socket stays open. Clients
 * connect in process (app.injectWS), but where the transport itself is tested (raw frames by the thousand, a close,
 * idle peers): those open real sockets on loopback.
 */
import t from 'tap'
import WebSocket from 'ws'
import { injectedApp, startApp } from '../../helpers/app.js'
import { TestClient, isNotification, type Frame } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'

const entities = {
  Team: { access: 'public' as const, payload: 'minimal' as const },
  RugbyGameState: { access: 'public' as const, payload: 'full' as const },
  ServiceAccount: { access: 'admin' as const },
  UserSettings: { access: 'owner' as const, ownerPath: ['userId'] }
}

t.test('subscribe, notifications, idempotence and unsubscribe', async (t) => {
  // no history: a subscription starts without a position, and a channel nobody watches gets nothing at once
  const { app, client } = await injectedApp(t, { entities, history: { size: 0 } })
  const ws = await client()
  const first = await ws.subscribe('Team', 'team-123', 'r1')
  t.same(first, { type: 'subscribed', id: 'r1', data: { subscriptionId: 'Team:team-123', entityType: 'Team', entityId: 'team-123' } })
  const again = await ws.subscribe('Team', 'team-123', 7)
  t.same(again.data, first.data, 'subscribing twice gives the same subscription')
  t.equal(again.id, 7, 'numeric ids are echoed')
  t.equal(app.changefeed.stats().subscriptions.active, 1, 'one subscription')

  t.equal(await app.changefeed.publish({ entityType: 'Team', entityId: 'team-123', changeType: 'updated' }), true)
  const n = await ws.next(isNotification('Team', 'team-123'))
  t.match(n.data, { changeType: 'updated', payloadType: 'minimal' })
  // a marker: a later change of another entity this socket watches comes after any second delivery of the first
  await ws.subscribe('Team', 'marker')
  await app.changefeed.publish({ entityType: 'Team', entityId: 'marker', changeType: 'updated' })
  await ws.next(isNotification('Team', 'marker'))
  t.same(ws.messages.filter(isNotification('Team', 'team-123')), [], 'one delivery per change')

  ws.send({ type: 'unsubscribe', id: 'r3', data: { subscriptionId: 'Team:team-123' } })
  t.same(await ws.next((m) => m.id === 'r3'), { type: 'unsubscribed', id: 'r3', data: { subscriptionId: 'Team:team-123' } })
  t.equal(await app.changefeed.publish({ entityType: 'Team', entityId: 'team-123', changeType: 'updated' }), false, 'nobody watches now')

  await ws.subscribe('Team', 'team-9')
  ws.send({ type: 'unsubscribe', id: 'r4', data: { entityType: 'Team', entityId: 'team-9' } })
  t.match(await ws.next((m) => m.id === 'r4'), { type: 'unsubscribed', data: { subscriptionId: 'Team:team-9' } })
  ws.send({ type: 'unsubscribe', id: 'r5', data: { subscriptionId: 'Team:never' } })
  t.equal((await ws.next((m) => m.id === 'r5')).type, 'unsubscribed', 'unsubscribing twice is harmless')

  ws.send({ type: 'ping' })
  t.same(await ws.next((m) => m.type === 'pong'), { type: 'pong' })
})

t.test('a ping with an id is answered with a pong carrying it, like every other request', async (t) => {
  const { client } = await injectedApp(t, { entities })
  const ws = await client()
  ws.send({ type: 'ping', id: 'p1' })
  ws.send({ type: 'ping', id: 42 })
  ws.send({ type: 'ping' })
  t.same(await ws.next((m) => m.type === 'pong'), { type: 'pong', id: 'p1' })
  t.same(await ws.next((m) => m.type === 'pong'), { type: 'pong', id: 42 }, 'integer ids too')
  t.same(await ws.next((m) => m.type === 'pong'), { type: 'pong' }, 'no id, none echoed')
})

t.test('notify mode: every notification has a channel position; since resumes from the history, unless the type keeps none', async (t) => {
  const { app, client } = await injectedApp(t, { entities: { ...entities, Team: { ...entities.Team, history: false } }, history: { size: 10 } })
  const ws = await client()
  await ws.subscribe('Team', 'team-p')
  await ws.subscribe('RugbyGameState', 'match-p')
  for (const entityType of ['Team', 'Team', 'RugbyGameState']) await app.changefeed.publish({ entityType, entityId: entityType === 'Team' ? 'team-p' : 'match-p', changeType: 'updated' })
  const [a, b] = [await ws.next(isNotification('Team', 'team-p')), await ws.next(isNotification('Team', 'team-p'))]
  t.type(a.data.position, 'string')
  t.not(a.data.position, b.data.position, 'positions tell changes apart')
  ws.send({ type: 'subscribe', id: 's', data: { entityType: 'Team', entityId: 'team-p', since: b.data.position } })
  t.match(await ws.next((m) => m.id === 's'), { type: 'subscribed', data: { subscriptionId: 'Team:team-p', recovered: false } }, 'history: false')
  const c = await ws.next(isNotification('RugbyGameState', 'match-p'))
  t.match(c.data.position, /^[0-9a-f]{8}:1$/, 'a channel position')
  ws.send({ type: 'subscribe', id: 'h', data: { entityType: 'RugbyGameState', entityId: 'match-p', since: c.data.position } })
  t.match(await ws.next((m) => m.id === 'h'), { type: 'subscribed', data: { recovered: true } }, 'resumed from the history')
  ws.send({ type: 'subscribe', id: 'n', data: { entityType: 'Team', entityId: 'team-new', since: 'n:42' } })
  t.match(await ws.next((m) => m.id === 'n'), { type: 'subscribed', data: { recovered: false } }, 'also for a new subscription')
  t.equal(app.changefeed.stats().subscriptions.active, 3)
})

t.test('full payload from a host publish; the frame is the same string for every watcher', async (t) => {
  const { app, client } = await injectedApp(t, { entities })
  const a = await client()
  const b = await client()
  await a.subscribe('RugbyGameState', 'match-1')
  await b.subscribe('RugbyGameState', 'match-1')
  const payload = { homeScore: 7, awayScore: 3 }
  await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload, version: 12 })
  const [na, nb] = await Promise.all([a.next(isNotification('RugbyGameState', 'match-1')), b.next(isNotification('RugbyGameState', 'match-1'))])
  t.match(na.data, { payloadType: 'full', payload, version: '12' })
  t.equal(a.raw.at(-1), b.raw.at(-1), 'identical frames')
  t.same(na, nb)
})

t.test('host publish rejects what it cannot route, with codes', async (t) => {
  const { app } = await injectedApp(t, { entities })
  await t.rejects(app.changefeed.publish({ entityType: 'Nope', entityId: 'x', changeType: 'updated' }), { code: 'CHANGEFEED_UNKNOWN_ENTITY_TYPE' })
  await t.rejects(app.changefeed.publish({ entityType: 'Team', entityId: '', changeType: 'updated' }), { code: 'CHANGEFEED_INVALID_CHANGE' })
  await t.rejects(app.changefeed.publish({ entityType: 'Team', entityId: 'a', changeType: 'exploded' as 'updated' }), { code: 'CHANGEFEED_INVALID_CHANGE' })
})

t.test('subscription errors are coded and leave the socket open', async (t) => {
  const { client } = await injectedApp(t, { entities })
  const ws = await client()
  t.match(await ws.subscribe('Unknown', 'x'), { type: 'subscription_error', data: { code: WireError.unknownEntityType, entityType: 'Unknown', entityId: 'x' } })
  t.match(await ws.subscribe('ServiceAccount', 'svc-1'), { type: 'subscription_error', data: { code: WireError.unauthenticated } })
  t.match(await ws.subscribe('UserSettings', 'us-1'), { type: 'subscription_error', data: { code: WireError.unauthenticated } })
  t.equal((await ws.subscribe('Team', 'still-open')).type, 'subscribed', 'the socket still works')
})

/** Bad frames of many kinds, generated from a seed so a failure can be replayed. */
function badFrames (count: number, seed: number): Array<string | Buffer> {
  let s = seed
  const rnd = (): number => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff }
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]
  const junk = (): string => Array.from({ length: 1 + Math.floor(rnd() * 40) }, () => String.fromCharCode(Math.floor(rnd() * 0xffff))).join('')
  // none of these makes a valid request: no known entity type among them
  const values: unknown[] = [null, true, 0, -1, 1e308, '', 'x', [], {}, [1, 2], { a: 1 }, '\u0000']
  const makers: Array<() => string | Buffer> = [
    () => junk(),
    () => '{' + junk(),
    () => JSON.stringify(pick(values)),
    () => JSON.stringify({ type: pick(values) }),
    () => JSON.stringify({ type: junk() }),
    () => JSON.stringify({ type: 'subscribe' }),
    () => JSON.stringify({ type: 'subscribe', data: pick(values) }),
    () => JSON.stringify({ type: 'subscribe', id: pick(values), data: { entityType: pick(values), entityId: pick(values) } }),
    () => JSON.stringify({ type: 'subscribe', data: { entityType: 'Team', entityId: 'x'.repeat(600) } }),
    () => JSON.stringify({ type: 'subscribe', data: { entityType: 'Team', entityId: 't', extra: 1 } }),
    () => JSON.stringify({ type: 'unsubscribe', data: { subscriptionId: pick([null, 0, [], {}, '']) } }),
    () => JSON.stringify({ type: 'unsubscribe', data: {} }),
    () => JSON.stringify({ type: 'auth', data: { token: pick(values) } }),
    () => JSON.stringify({ type: 'ping', id: { nested: true } }),
    () => JSON.stringify({ type: 'notification', data: {} }),
    () => Buffer.from([0, 1, 2, 255, 254])
  ]
  return Array.from({ length: count }, () => pick(makers)())
}

t.test('1,000 random malformed frames: each gets a coded error, the server stays up', async (t) => {
  const { app, client } = await startApp(t, { entities, limits: { maxBadFramesPerMinute: 5000 } })
  const ws = await client()
  const frames = badFrames(1000, 20251008)
  for (const f of frames) ws.ws.send(f, { binary: Buffer.isBuffer(f) })
  ws.send({ type: 'ping', id: 'done' })
  await ws.next((m) => m.type === 'pong', 10_000)
  const replies = ws.messages.splice(0)
  const codes = new Set<string>(Object.values(WireError))
  const uncoded = replies.filter((m: Frame) => !((m.type === 'error' || m.type === 'subscription_error') && codes.has(m.data?.code)))
  t.same(uncoded, [], 'every reply is a coded error')
  t.equal(replies.length, frames.length, 'one reply per bad frame')
  t.equal(ws.ws.readyState, WebSocket.OPEN, 'the socket stays open')
  t.equal(app.changefeed.stats().subscriptions.active, 0, 'no bad frame created a subscription')

  const fresh = await client()
  await fresh.subscribe('Team', 'after-fuzz')
  await app.changefeed.publish({ entityType: 'Team', entityId: 'after-fuzz', changeType: 'created' })
  t.equal((await fresh.next(isNotification('Team', 'after-fuzz'))).data.changeType, 'created', 'the server still delivers')
})

t.test('persistent abuse closes the socket with 1008; others are unaffected', async (t) => {
  const { client } = await injectedApp(t, { entities, limits: { maxBadFramesPerMinute: 20 } })
  const good = await client()
  const bad = await client()
  for (let i = 0; i < 50; i++) bad.send('not json')
  t.equal((await bad.closed).code, 1008)
  t.ok(bad.messages.length >= 20 && bad.messages.every((m) => m.data.code === WireError.invalidJson), 'errors before the close')
  t.equal((await good.subscribe('Team', 'fine')).type, 'subscribed')
})

t.test('a frame larger than maxMessageBytes closes with 1009', async (t) => {
  const { client } = await injectedApp(t, { entities, limits: { maxMessageBytes: 1024 } })
  const ws = await client()
  ws.send({ type: 'subscribe', data: { entityType: 'Team', entityId: 'x'.repeat(2000) } })
  t.equal((await ws.closed).code, 1009)
  const other = await client()
  t.equal((await other.subscribe('Team', 'a')).type, 'subscribed', 'the server goes on')
})

t.test('a subscribe flood is rate limited with rate_limited', async (t) => {
  const { client } = await injectedApp(t, { entities, limits: { maxSubscriptionsPerConnection: 10, subscribeRatePerSecond: 1, maxBadFramesPerMinute: 1000 } })
  const ws = await client()
  for (let i = 0; i < 30; i++) ws.send({ type: 'subscribe', id: i, data: { entityType: 'Team', entityId: `t-${i}` } })
  // every request gets exactly one reply: wait for each, then a ping (answered at once) shows nothing else is on its way
  const replies: Frame[] = []
  for (let i = 0; i < 30; i++) replies.push(await ws.next((m) => m.id === i))
  ws.send({ type: 'ping' })
  await ws.next((m) => m.type === 'pong')
  t.same(ws.messages, [], 'one reply per request')
  // the burst is maxSubscriptionsPerConnection + one second's worth: 11
  t.equal(replies.filter((m) => m.type === 'subscribed').length, 10, 'the burst is admitted up to the subscription limit')
  t.equal(replies.filter((m) => m.type === 'subscription_error' && m.data.code === WireError.tooManySubscriptions).length, 1)
  t.equal(replies.filter((m) => m.type === 'error' && m.data.code === WireError.rateLimited).length, 19, 'the rest is refused')
})

t.test('past maxSubscriptionsPerConnection: too_many_subscriptions', async (t) => {
  const { client } = await injectedApp(t, { entities, limits: { maxSubscriptionsPerConnection: 3, subscribeRatePerSecond: 1000 } })
  const ws = await client()
  for (let i = 0; i < 3; i++) t.equal((await ws.subscribe('Team', `t-${i}`)).type, 'subscribed')
  t.match(await ws.subscribe('Team', 't-3'), { type: 'subscription_error', data: { code: WireError.tooManySubscriptions } })
  t.equal((await ws.subscribe('Team', 't-0', 'again')).type, 'subscribed', 'an existing subscription is still confirmed')
})

t.test('closing a socket removes all its subscriptions', async (t) => {
  const { app, client } = await startApp(t, { entities, history: { size: 0 } })
  const ws = await client()
  await ws.subscribe('Team', 'a')
  await ws.subscribe('Team', 'b')
  t.equal(app.changefeed.stats().subscriptions.active, 2)
  ws.close()
  await ws.closed
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0), 'the subscriptions end with the socket')
  t.equal(await app.changefeed.publish({ entityType: 'Team', entityId: 'a', changeType: 'updated' }), false)
})

t.test('idle peers are closed with 4408; shutdown closes with 1001', async (t) => {
  // an idle timeout of a second: a loaded machine's event loop may stall for a few hundred milliseconds
  const { app, url } = await startApp(t, { entities, limits: { pingIntervalSeconds: 0.2, idleTimeoutSeconds: 1 } })
  // a peer that never answers pings: ws answers automatically unless told not to
  const silent = await TestClient.open(url, { autoPong: false })
  t.equal((await silent.closed).code, 4408)
  const live = await TestClient.open(url)
  // each sweep either closes a peer or pings it: the seventh ping comes from a sweep past the idle timeout (1 s)
  let pings = 0
  live.ws.on('ping', () => { pings++ })
  t.ok(await until(() => pings >= 7 || live.ws.readyState !== WebSocket.OPEN), 'pinged past the idle timeout')
  t.equal(live.ws.readyState, WebSocket.OPEN, 'a peer that answers pings stays')
  await app.close()
  t.equal((await live.closed).code, 1001)
})

t.test('the plugin refuses a second registration and invalid options, with codes', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: changefeed } = await import('../../../lib/index.js')
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(changefeed, {})
  await t.rejects(async () => { await app.register(changefeed, {}); await app.ready() }, { code: 'CHANGEFEED_ALREADY_REGISTERED' })
  const bad = Fastify()
  t.teardown(async () => await bad.close())
  await t.rejects(async () => { await bad.register(changefeed, { entities: { Team: { access: 'everyone' as 'public' } } }); await bad.ready() },
    { code: 'CHANGEFEED_INVALID_OPTIONS', message: /\/entities\/Team\/access/ })
})
