/**
 * The client SDK in Node against the real server: reference-counted subscriptions, reconnect and resubscribe after
 * a server restart, in-band token refresh, no blind reconnects (4401, 4403), receive-side liveness, and the
 * distribution of the backoff jitter. Then, with no server: a subscription's state transitions (a fake host), and
 * the client's wiring of sockets to subscriptions (a fake of its injectable WebSocket, on a fake clock).
 */
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import type { AddressInfo } from 'node:net'
import { once } from 'node:events'
import Fastify from 'fastify'
import changefeed from '../../../lib/index.js'
import { ChangefeedClient, ClientError, backoffDelay, type Notification, type StateChange } from '../../../lib/client/index.js'
import { Subscription, type SubscriptionHost } from '../../../lib/client/subscription.js'
import type { ClientMessage } from '../../../lib/client/frames.js'
import type { NotificationMessage } from '../../../lib/protocol/messages.js'
import { fakeClock, turn } from '../../unit/fixtures/fakes.js'
import { fakeSockets } from '../../unit/fixtures/sockets.js'
import { startApp } from '../../helpers/app.js'
import { TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { sleep, until } from '../../helpers/wait.js'

const SECRET = 'client-test-secret-0123456789abcdef'
const entities = { Team: { access: 'public' as const }, User: { access: 'owner' as const }, RugbyGameState: { access: 'public' as const, payload: 'full' as const } }
type Entities = { Team: { name: string }, User: { email: string }, RugbyGameState: { homeScore: number } }
const client = (t: { teardown(fn: () => unknown): void }, options: ConstructorParameters<typeof ChangefeedClient>[0]): ChangefeedClient<Entities> => {
  const c = new ChangefeedClient<Entities>({ WebSocket: WebSocket as never, ...options })
  t.teardown(() => c.destroy())
  return c
}

/** ws's WebSocket, counting the sockets a client makes: an attempt to connect is a socket made. */
function countedSockets (): { WebSocket: never, made: () => number } {
  let made = 0
  class Counted extends WebSocket {
    constructor (url: string) {
      super(url)
      made++
    }
  }
  return { WebSocket: Counted as never, made: () => made }
}

/**
 * Lets every timer set so far with no delay run, and what it starts: with no jitter (`random: () => 0`) a retry is
 * set with no delay, and makes its socket without waiting on any timer of its own. (Node runs timers of one delay in
 * the order they were set; the immediate first puts this one after any set in the current turn.)
 */
const timerTurn = async (): Promise<void> => {
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setTimeout(resolve, 0))
}

t.test('full jitter: delays are uniform up to the exponential cap', async (t) => {
  const samples = Array.from({ length: 20_000 }, () => backoffDelay(3, 500, 30_000))
  t.ok(samples.every((d) => d >= 0 && d < 2000), 'attempt 3: within [0, 2000)')
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length
  t.ok(Math.abs(mean - 1000) < 40, `mean near half the cap (${mean.toFixed(0)})`)
  const quarters = [0, 0, 0, 0]
  for (const d of samples) quarters[Math.floor(d / 500)]++
  t.ok(quarters.every((q) => Math.abs(q / samples.length - 0.25) < 0.02), `each quarter holds a quarter (${quarters.join(', ')})`)
  t.ok(Array.from({ length: 1000 }, () => backoffDelay(20, 500, 30_000)).every((d) => d < 30_000), 'capped at maxMs')
})

t.test('subscriptions are reference-counted: mount, unmount, mount sends one subscribe and no unsubscribe', async (t) => {
  const { app, url } = await startApp(t, { entities })
  const c = client(t, { url })
  t.ok(await until(() => c.state === 'open'))
  const got: Notification[] = []
  const first = c.subscribe('Team', 'team-1', { onNotification: (n) => got.push(n) })
  first()
  const second = c.subscribe('Team', 'team-1', { onNotification: (n) => got.push(n) })
  const third = c.subscribe('Team', 'team-1')
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 1))
  // a marker: the client sends on one socket and the server handles a socket's requests in order, so once a
  // subscribe sent now has been handled, so has any unsubscribe the release sent
  const marker = c.subscribe('Team', 'marker')
  t.ok(await until(() => app.changefeed.stats().subscriptions.created === 2))
  t.same([app.changefeed.stats().subscriptions.created, app.changefeed.stats().subscriptions.removed], [2, 0], 'one subscribe (and the marker\'s), no unsubscribe')
  marker()
  await app.changefeed.publish({ entityType: 'Team', entityId: 'team-1', changeType: 'updated' })
  t.ok(await until(() => got.length === 1), 'the live listener gets it once')
  second()
  third()
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0), 'the last release unsubscribes')
})

t.test('after a server restart the client reconnects, resubscribes in one batch, and asks for a refetch', async (t) => {
  const first = Fastify()
  await first.register(changefeed, { entities })
  await first.listen({ host: '127.0.0.1', port: 0 })
  const port = (first.server.address() as AddressInfo).port
  const states: StateChange[] = []
  const c = client(t, { url: `ws://127.0.0.1:${port}/ws`, backoff: { initialMs: 50, maxMs: 200 } })
  c.onState((s) => states.push(s))
  const resyncs: string[] = []
  const got: Notification[] = []
  c.subscribe('Team', 'a', { onNotification: (n) => got.push(n), onResync: (r) => resyncs.push(r) })
  c.subscribe('RugbyGameState', 'm', { onNotification: (n) => got.push(n) })
  t.ok(await until(() => first.changefeed.stats().subscriptions.active === 2))
  await first.close()
  t.ok(await until(() => c.state === 'reconnecting'), 'reconnecting')

  const second = Fastify()
  t.teardown(async () => await second.close())
  await second.register(changefeed, { entities })
  await second.listen({ host: '127.0.0.1', port })
  t.ok(await until(() => second.changefeed.stats().subscriptions.active === 2, 10_000), 'both subscriptions are back')
  t.ok(await until(() => resyncs.includes('reconnected')), 'the owner is told to refetch what it may have missed')
  await second.changefeed.publish({ entityType: 'Team', entityId: 'a', changeType: 'updated' })
  t.ok(await until(() => got.length === 1), 'and receives again')
  const reconnecting = states.filter((s) => s.to === 'reconnecting')
  t.ok(reconnecting.length > 0 && reconnecting.every((s) => s.attempt >= 1 && s.nextRetryMs !== undefined && s.nextRetryMs <= 200), 'state events carry the attempt and next retry')
  t.equal(states.at(-1)?.to, 'open')
})

t.test('the token is refreshed in-band before it expires; concurrent token requests share one call', async (t) => {
  const { app, url } = await startApp(t, { entities, auth: { jwt: { secret: SECRET } } })
  // the first token lapses 1.5 s from now (a JWT's exp may have a fraction); the client refreshes it 1 s before
  const expiresAt = Date.now() + 1500
  const first = signHs256({ sub: 'user-1', exp: expiresAt / 1000 }, SECRET)
  let calls = 0
  const getToken = async (): Promise<string> => {
    calls++
    await sleep(50)
    return calls === 1 ? first : signHs256({ sub: 'user-1', exp: now() + 600 }, SECRET)
  }
  const c = client(t, { url, getToken, refreshBeforeExpiryMs: 1000 })
  const got: Notification[] = []
  c.subscribe('User', 'user-1', { onNotification: (n) => got.push(n) })
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 1))
  t.equal(calls, 1, 'one call for the connection')
  // a socket that keeps the first token: the server closes it when the token expires
  const kept = await TestClient.open(`${url}?token=${first}`)
  t.equal((await kept.closed).code, 4401, 'the first token expired')
  // once the clock is past the expiry, the server's expiry timer of the client's socket, had the refresh not replaced
  // it, runs before the server reads the client's next request
  t.ok(await until(() => Date.now() > expiresAt))
  c.subscribe('Team', 'after-expiry')
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 2), 'the server still takes requests from the client')
  t.equal(c.state, 'open', 'still open after the first token expired')
  t.equal(calls, 2, 'refreshed once')
  t.equal(app.changefeed.stats().connections.opened, 2, 'on the same socket (the other one is the expired token\'s)')
  await app.changefeed.publish({ entityType: 'User', entityId: 'user-1', changeType: 'updated' })
  t.ok(await until(() => got.length === 1), 'an owner-only entity still flows')
})

t.test('a token provider that hands out its cached token until later: the same token is never sent twice', async (t) => {
  const { app, url } = await startApp(t, { entities, auth: { jwt: { secret: SECRET } } })
  // due for a refresh 1 s from now; the provider keeps handing out the same token until 1.5 s from now
  const startedAt = Date.now()
  const expiresAt = startedAt + 4000
  const cached = signHs256({ sub: 'user-1', exp: expiresAt / 1000 }, SECRET)
  const renewed = signHs256({ sub: 'user-1', exp: now() + 600 }, SECRET)
  let calls = 0
  const getToken = (): string => { calls++; return Date.now() < startedAt + 1500 ? cached : renewed }
  const c = client(t, { url, getToken, refreshBeforeExpiryMs: 3000 })
  c.subscribe('User', 'user-1', {})
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 1))
  t.ok(await until(() => app.changefeed.stats().auth.attempts.jwt === 2, 5000), 'the renewed token is sent once it is handed out')
  t.ok(calls >= 3, `the provider was asked again until it renewed (${calls} calls)`)
  t.ok(await until(() => Date.now() > expiresAt))
  t.equal(app.changefeed.stats().auth.attempts.jwt, 2, 'the cached token was sent once, at the connection')
  t.equal(c.state, 'open', 'signed in past the cached token\'s expiry')
})

t.test('a refused token stops the client: no reconnect without a fresh token', async (t) => {
  const { app, url } = await startApp(t, { entities, auth: { anonymous: false, jwt: { secret: SECRET } } })
  let calls = 0
  const sockets = countedSockets()
  const c = client(t, { url, getToken: () => { calls++; return 'not-a-valid-token' }, random: () => 0, WebSocket: sockets.WebSocket })
  t.ok(await until(() => c.state === 'unauthorized'), 'unauthorized')
  const made = sockets.made()
  t.ok(app.changefeed.stats().connections.opened >= 1, 'the server saw the token')
  await timerTurn()
  t.equal(sockets.made(), made, 'no further attempts')
  t.ok(calls <= 2, `getToken asked at most twice (${calls})`)

  const anonymous = client(t, { url, backoff: { initialMs: 20, maxMs: 50 } })
  anonymous.subscribe('Team', 'x')
  t.ok(await until(() => anonymous.state === 'unauthorized', 12_000), 'without getToken, 4401 is final')
})

t.test('4403 is final; a server that never answers is noticed by the client', async (t) => {
  const refusing = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  t.teardown(() => refusing.close())
  await once(refusing, 'listening')
  let refusals = 0
  refusing.on('connection', (socket) => { refusals++; socket.close(4403, 'forbidden') })
  const sockets = countedSockets()
  const a = client(t, { url: `ws://127.0.0.1:${(refusing.address() as AddressInfo).port}`, random: () => 0, WebSocket: sockets.WebSocket })
  t.ok(await until(() => a.state === 'closed'), 'closed')
  t.equal(refusals, 1, 'refused once')
  await timerTurn()
  t.equal(sockets.made(), 1, 'not retried')

  const silent = new WebSocketServer({ port: 0, host: '127.0.0.1', autoPong: false })
  t.teardown(() => silent.close())
  await once(silent, 'listening')
  const b = client(t, { url: `ws://127.0.0.1:${(silent.address() as AddressInfo).port}`, pingIntervalMs: 100, pongTimeoutMs: 150 })
  const reasons: string[] = []
  b.onState((s) => reasons.push(s.reason))
  t.ok(await until(() => reasons.includes('no pong in time'), 3000), 'a dead link is detected without the server')
})

t.test('the WebSocket: the option, else the runtime\'s global one; with neither the constructor says which option is missing', async (t) => {
  const runtime = globalThis as { WebSocket?: unknown }
  const own = runtime.WebSocket
  t.teardown(() => { runtime.WebSocket = own })
  // Node 20 has no global WebSocket (Node 22 does): a runtime without one
  runtime.WebSocket = undefined
  t.throws(() => new ChangefeedClient({ url: 'ws://127.0.0.1:1/ws' }), { code: ClientError.noWebSocket }, 'a coded error, at construction')
  t.throws(() => new ChangefeedClient({ url: 'ws://127.0.0.1:1/ws', autoConnect: false }), { code: ClientError.noWebSocket }, 'even before connecting')

  const { app, url } = await startApp(t, { entities })
  const injected = client(t, { url })
  t.ok(await until(() => injected.state === 'open'), 'ws\'s WebSocket, injected, connects')
  // a runtime with a global one (browsers, Node 22): no option needed
  runtime.WebSocket = WebSocket
  const global = new ChangefeedClient<Entities>({ url })
  t.teardown(() => global.destroy())
  t.ok(await until(() => global.state === 'open'), 'the global WebSocket connects')
  t.ok(await until(() => app.changefeed.stats().connections.active === 2), 'both on the server')
})

t.test('destroy() closes and forgets everything', async (t) => {
  const { app, url } = await startApp(t, { entities })
  const sockets = countedSockets()
  const c = new ChangefeedClient<Entities>({ url, WebSocket: sockets.WebSocket, autoConnect: false })
  c.subscribe('Team', 'gone')
  c.connect()
  await timerTurn()
  t.equal(sockets.made(), 1, 'connect() makes its socket within a turn of the event loop')
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 1))
  c.destroy()
  t.ok(await until(() => app.changefeed.stats().connections.active === 0), 'the socket is closed')
  t.equal(c.state, 'closed')
  c.connect()
  await timerTurn()
  t.equal(sockets.made(), 1, 'and cannot be reused')
  t.equal(app.changefeed.stats().connections.opened, 1)
})

t.test('subscribes refused for rate are sent again until they hold', async (t) => {
  const { app, url } = await startApp(t, { entities, limits: { maxSubscriptionsPerConnection: 30, subscribeRatePerSecond: 2 } })
  const c = client(t, { url })
  t.ok(await until(() => c.state === 'open'))
  for (let i = 0; i < 40; i++) c.subscribe('Team', `t-${i}`)
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 30, 15_000), 'every subscription up to the server limit holds in the end')
  t.equal(c.state, 'open', 'on the same connection')
})

t.test('positions: a repeated notification is dropped; a resync is answered with since (what arrives before the reply is left to the replay), and only a refusal reaches the owner', async (t) => {
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close())
  await once(server, 'listening')
  const received: any[] = []
  let socket: WebSocket | null = null
  server.on('connection', (s) => {
    socket = s
    s.on('message', (data) => received.push(JSON.parse(data.toString())))
  })
  const c = client(t, { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}` })
  const got: string[] = []
  const resyncs: string[] = []
  c.subscribe('RugbyGameState', 'm1', { onNotification: (n) => got.push(n.position!), onResync: (r) => resyncs.push(r) })
  t.ok(await until(() => received.some((m) => m.type === 'subscribe')), 'subscribed')
  const send = (m: unknown): void => socket!.send(JSON.stringify(m))
  const note = (position: string): unknown => ({ type: 'notification', data: { entityType: 'RugbyGameState', entityId: 'm1', changeType: 'updated', payloadType: 'minimal', timestamp: new Date().toISOString(), position } })
  const subscribed = (recovered?: boolean): unknown => ({ type: 'subscribed', id: 'RugbyGameState:m1', data: { subscriptionId: 'RugbyGameState:m1', entityType: 'RugbyGameState', entityId: 'm1', recovered } })
  // a marker: a notification of an entity the client does not watch reaches only its onNotification observers, and
  // the client handles frames in order: once it is seen, every frame before it has been handled
  const markers: string[] = []
  c.onNotification((n) => { if (n.entityId === 'marker') markers.push(n.position!) })
  const marker = async (position: string): Promise<boolean> => {
    send({ type: 'notification', data: { entityType: 'RugbyGameState', entityId: 'marker', changeType: 'updated', payloadType: 'minimal', timestamp: new Date().toISOString(), position } })
    return await until(() => markers.includes(position))
  }
  send(subscribed())
  for (const p of ['0a0a0a0a:1', '0a0a0a0a:1', '0a0a0a0a:2']) send(note(p))
  t.ok(await marker('0b0b0b0b:1'))
  t.same(got, ['0a0a0a0a:1', '0a0a0a0a:2'], 'the repeat was dropped')

  received.length = 0
  send({ type: 'resync', data: { reason: 'bus_gap', entityType: 'RugbyGameState', entityId: 'm1' } })
  t.ok(await until(() => received.length === 1))
  t.match(received[0], { type: 'subscribe', data: { entityType: 'RugbyGameState', entityId: 'm1', since: '0a0a0a0a:2' } }, 'the resync is answered with since')
  // written live before the server took the resume: the replay carries it, in its place
  send(note('0a0a0a0a:4'))
  send(subscribed(true))
  send(note('0a0a0a0a:3'))
  send(note('0a0a0a0a:4'))
  t.ok(await marker('0b0b0b0b:2'), 'the replay arrives')
  t.same(got.slice(2), ['0a0a0a0a:3', '0a0a0a0a:4'], 'in order: what came before the reply was dropped')
  t.same(resyncs, [], 'recovered: the owner refetches nothing')

  received.length = 0
  send({ type: 'resync', data: { reason: 'bus_gap' } })
  t.ok(await until(() => received.length === 1))
  t.equal(received[0].data.since, '0a0a0a0a:4')
  send(subscribed(false))
  t.ok(await until(() => resyncs.length === 1), 'not recovered: the owner is told')
  t.same(resyncs, ['bus_gap'], 'with the reason')
})

t.test('tenants: a subscription names its tenant, or takes the token\'s; notifications and counts find it', async (t) => {
  const { app, url } = await startApp(t, {
    entities: { Squad: { access: 'authenticated', tenanted: true }, Fixture: { access: 'public', tenanted: true } },
    auth: { anonymous: true, jwt: { secret: SECRET, tenantClaim: 'tenant' } }
  })
  const redToken = signHs256({ sub: 'r', tenant: 'Red', exp: now() + 600 }, SECRET)
  const red = client(t, { url, getToken: () => redToken })
  const anonymous = client(t, { url })
  const squads: Notification[] = []
  const fixtures: Notification[] = []
  const tenantFixtures: Notification[] = []
  red.subscribe('Squad' as never, 's-1', { onNotification: (n) => squads.push(n) })
  anonymous.subscribe('Fixture' as never, 'f-1', { onNotification: (n) => fixtures.push(n) })
  anonymous.subscribe('Fixture' as never, 'f-1', { onNotification: (n) => tenantFixtures.push(n) }, { tenantId: 'Blue' })
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 3), `subscribed: ${JSON.stringify(app.changefeed.stats().subscriptions)}`)
  await app.changefeed.publish({ entityType: 'Squad', entityId: 's-1', tenantId: 'Blue', changeType: 'updated' })
  await app.changefeed.publish({ entityType: 'Squad', entityId: 's-1', tenantId: 'Red', changeType: 'updated' })
  await app.changefeed.publish({ entityType: 'Fixture', entityId: 'f-1', tenantId: 'Red', changeType: 'updated' })
  await app.changefeed.publish({ entityType: 'Fixture', entityId: 'f-1', tenantId: 'Blue', changeType: 'updated' })
  t.ok(await until(() => squads.length === 1 && fixtures.length === 2 && tenantFixtures.length === 1))
  t.equal(squads[0].tenantId, 'Red', 'the token\'s tenant only')
  t.same(fixtures.map((n) => n.tenantId), ['Red', 'Blue'], 'every tenant, tagged')
  t.same(tenantFixtures.map((n) => n.tenantId), ['Blue'], 'the one named')
})

t.test('a type named in another letter case is matched by the request, and unsubscribes', async (t) => {
  const url = await (await import('../../helpers/services.js')).freshDatabase(t, 'client_case')
  const sql = await (await import('../../helpers/services.js')).sqlClient(t, url)
  await sql.query((await import('../../helpers/services.js')).martenTableSql('mt_doc_scoreboard'))
  const { app, url: wsUrl } = await startApp(t, { databases: [{ name: 'main', url }], discovery: { access: 'public' } })
  const c = client(t, { url: wsUrl })
  const errors: string[] = []
  const handle = c.subscribe('scoreboard' as never, 'b-1', { onError: (code) => errors.push(code) })
  t.ok(await until(() => handle.status === 'subscribed'), 'the reply (named Scoreboard by the server) reaches it')
  handle.close()
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0), 'and its unsubscribe ends it')
  t.same(errors, [])
})

t.test('anonymousFallback: a refused token keeps public subscriptions flowing; a fresh one brings back the rest', async (t) => {
  const { app, url } = await startApp(t, {
    entities: { Team: { access: 'public' }, MemberNews: { access: 'authenticated' } },
    auth: { anonymous: true, jwt: { secret: SECRET } }
  })
  let token = signHs256({ sub: 'u', exp: now() + 600 }, 'not-the-secret-0123456789abcdefghij')
  const c = client(t, { url, getToken: () => token, anonymousFallback: true })
  const teams: Notification[] = []
  const news: Notification[] = []
  const errors: string[] = []
  c.subscribe('Team', 't-1', { onNotification: (n) => teams.push(n) })
  c.subscribe('MemberNews' as never, 'n-1', { onNotification: (n) => news.push(n), onError: (code) => errors.push(code) })
  t.ok(await until(() => errors.includes('unauthenticated')), 'the private subscription is refused')
  await app.changefeed.publish({ entityType: 'Team', entityId: 't-1', changeType: 'updated' })
  t.ok(await until(() => teams.length === 1), 'the public one flows')
  t.equal(c.state, 'open', 'still connected')
  token = signHs256({ sub: 'u', exp: now() + 600 }, SECRET)
  await c.reauthenticate()
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 2), 'signed in, the refused one is asked for again')
  await app.changefeed.publish({ entityType: 'MemberNews', entityId: 'n-1', changeType: 'updated' })
  t.ok(await until(() => news.length === 1))
})

t.test('a burst of resyncs for one entity reaches the application once', async (t) => {
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close())
  await once(server, 'listening')
  server.on('connection', (socket) => {
    socket.on('message', (raw) => {
      const message = JSON.parse(String(raw))
      if (message.type !== 'subscribe') return
      socket.send(JSON.stringify({ type: 'subscribed', id: message.id, data: { subscriptionId: message.id, entityType: 'Team', entityId: 't-1' } }))
      for (let i = 0; i < 3; i++) socket.send(JSON.stringify({ type: 'resync', data: { reason: 'bus_gap', entityType: 'Team', entityId: 't-1' } }))
      // a marker: a notification of an entity the client does not watch, seen by its onNotification observers
      socket.send(JSON.stringify({ type: 'notification', data: { entityType: 'Team', entityId: 'marker', changeType: 'updated', payloadType: 'minimal', timestamp: new Date().toISOString() } }))
    })
  })
  const c = client(t, { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}` })
  const resyncs: string[] = []
  let marked = false
  c.onNotification((n) => { marked ||= n.entityId === 'marker' })
  c.subscribe('Team', 't-1', { onResync: (reason) => resyncs.push(reason) })
  // the client handles frames in order: with the marker seen, all three resyncs have been handled
  t.ok(await until(() => marked))
  // The client tells the application of a burst within RESYNC_BURST_MS (50 ms, lib/client/index.ts) of its first
  // resync, on a timer. A 50 ms timer started now fires after every such timer the three frames could have started
  // (Node runs timers of one duration in the order they were set): after it, no callback is still to come.
  await sleep(50)
  t.same(resyncs, ['bus_gap'], 'one callback for three frames')
})

// ------------------------------------------------------------------ units, no server: a fake host, a fake socket

/** A subscription's host that records what it sends; `open` says whether a socket would take it. */
function fakeHost (): SubscriptionHost & { open: boolean, sent: ClientMessage[], resyncs: string[], releases: number } {
  const host = {
    open: false,
    sent: [] as ClientMessage[],
    resyncs: [] as string[],
    releases: 0,
    origin: 'me',
    random: () => 0,
    send: (message: ClientMessage) => host.open && host.sent.push(message) > 0,
    resynced: (_s: Subscription, reason: string) => { host.resyncs.push(reason) },
    released: () => { host.releases++ },
    snapshotted: () => {}
  }
  return host
}

const frameOf = (position: string): NotificationMessage =>
  ({ entityType: 'RugbyGameState', entityId: 'm1', changeType: 'updated', payloadType: 'minimal', timestamp: new Date(0).toISOString(), position })

t.test('a subscription goes through its states as the table in subscription.ts says', async (t) => {
  const clock = fakeClock(t)
  const host = fakeHost()
  const s = new Subscription('RugbyGameState', 'm1', undefined, host)
  const got: string[] = []
  const errors: string[] = []
  const resyncs: string[] = []
  s.listeners.add({ onNotification: (n) => got.push(n.position ?? ''), onError: (code) => errors.push(code), onResync: (r) => resyncs.push(r) })
  s.hold()
  const lastSent = (): ClientMessage | undefined => host.sent.at(-1)

  s.subscribe()
  t.equal(s.phase, 'unsubscribed', 'no socket: nothing sent, still unsubscribed')
  host.open = true
  s.onOpen(false)
  t.equal(s.phase, 'subscribing')
  t.same(lastSent(), { type: 'subscribe', id: 'RugbyGameState:m1', data: { entityType: 'RugbyGameState', entityId: 'm1' } })
  s.onSubscribed(undefined)
  t.equal(s.phase, 'subscribed')
  t.equal(s.snapshot.status, 'subscribed')

  s.onNotification(frameOf('0a0a0a0a:1'), true)
  s.onResync('bus_gap')
  t.equal(s.phase, 'resuming', 'a resync with a resumable position resumes')
  t.match(lastSent(), { type: 'subscribe', data: { since: '0a0a0a0a:1' } })
  s.onNotification(frameOf('0a0a0a0a:3'), true)
  s.onResync('bus_gap')
  t.equal(host.sent.length, 2, 'a resync during the resume is answered by it')
  s.onSubscribed(true)
  s.onNotification(frameOf('0a0a0a0a:2'), true)
  clock.advance(100)
  t.same(got, ['0a0a0a0a:1', '0a0a0a0a:2'], 'what came before the reply was dropped')
  t.same(resyncs, [], 'recovered: no resync')

  s.onClose()
  t.equal(s.phase, 'unsubscribed', 'connection lost')
  s.onOpen(true)
  t.equal(s.phase, 'resuming', 'reopened with a position: resuming')
  s.onSubscribed(false)
  clock.advance(100)
  t.same([s.phase, resyncs], ['subscribed', ['reconnected']], 'not recovered: the holders refetch')

  s.onRateLimited()
  t.equal(s.phase, 'unsubscribed', 'refused for rate')
  clock.advance(249)
  t.equal(host.sent.length, 3)
  clock.advance(1)
  t.equal(s.phase, 'resuming', 'sent again after the delay')
  s.onSubscriptionError('internal_error', 'boom')
  t.equal(s.phase, 'unsubscribed', 'the server failed: retried too')
  s.onClose()
  clock.advance(2000)
  t.equal(host.sent.length, 4, 'a retry is dropped with the connection (the reopen sends it)')

  s.onOpen(true)
  s.onSubscriptionError('unauthenticated', 'sign in')
  t.same([s.phase, s.snapshot.status, errors], ['error', 'error', ['unauthenticated']])
  s.onSignedIn()
  t.equal(s.phase, 'resuming', 'signed in: asked for again')
  s.onSubscriptionError('forbidden', 'no')
  s.onSignedIn()
  t.equal(s.phase, 'error', 'forbidden stays refused')

  s.count()
  t.match(lastSent(), { type: 'subscribe', data: { watchers: true } }, 'asking for counts subscribes again')
  s.hold()
  s.release()
  clock.advance(1)
  t.equal(s.phase, 'resuming', 'still held: released only when the last holder leaves')
  s.release()
  s.hold()
  clock.advance(1)
  t.equal(host.releases, 0, 'held again within the tick: nothing happens')
  s.release()
  clock.advance(1)
  t.same([s.phase, host.releases, lastSent()], ['released', 1, { type: 'unsubscribe', data: { subscriptionId: 'RugbyGameState:m1' } }])
})

t.test('a subscription asks for the entity\'s state when a holder wants it and after each loss', async (t) => {
  const host = fakeHost()
  host.open = true
  const s = new Subscription('RugbyGameState', 'm1', undefined, host)
  const asked = (): unknown[] => host.sent.map((m) => m.type === 'subscribe' && 'entityId' in m.data ? [m.data.since, m.data.snapshot] : m.type)
  s.askSnapshot()
  s.onOpen(false)
  s.askSnapshot()
  t.same(asked(), [[undefined, true]], 'asked once')
  s.onSubscribed(undefined, { payload: { homeScore: 1 }, version: '1', position: 'n:1' })
  s.onClose()
  s.onOpen(true)
  s.onSubscribed(true)
  s.onClose()
  s.onOpen(true)
  t.same(asked().slice(1), [['n:1', true], ['n:1', true]], 'asked again after each reconnect, replayed or not')
})

t.test('connect() while the first socket is still being opened opens no second one', async (t) => {
  const { WebSocket, sockets } = fakeSockets()
  const c = client(t, { url: 'ws://fake', WebSocket })
  c.connect()
  await turn()
  c.connect()
  await turn()
  t.equal(sockets.length, 1)
})

t.test('several URLs: the first at random, each reconnect to another one at random', async (t) => {
  const clock = fakeClock(t)
  const { WebSocket, sockets } = fakeSockets()
  let seed = 7
  const random = (): number => { seed = (seed * 48271) % 2147483647; return seed / 2147483647 }
  const c = client(t, { url: ['ws://a', 'ws://b', 'ws://c'], WebSocket, random, backoff: { initialMs: 10, maxMs: 10 } })
  await turn()
  for (let i = 0; i < 12; i++) {
    sockets[i].open()
    sockets[i].close(1006)
    clock.advance(100)
    await turn()
  }
  const urls = sockets.map((s) => s.url)
  t.ok(urls.every((url, i) => i === 0 || url !== urls[i - 1]), `never the one that just closed: ${urls.join(' ')}`)
  t.equal(new Set(urls).size, 3, 'every one of them')
  t.ok(urls.some((url, i) => i >= 2 && url === urls[i - 2]), 'not merely the next in turn')
  c.destroy()
})

t.test('a subscription told where it starts resumes from there when cut before its first notification', async (t) => {
  const clock = fakeClock(t)
  const { WebSocket, sockets } = fakeSockets()
  const c = client(t, { url: 'ws://fake', WebSocket, random: () => 0.5, backoff: { initialMs: 100 } })
  const resyncs: string[] = []
  c.subscribe('RugbyGameState', 'm1', { onResync: (reason) => resyncs.push(reason) })
  await turn()
  sockets[0].open()
  sockets[0].receive({ type: 'subscribed', id: 'RugbyGameState:m1', data: { subscriptionId: 'RugbyGameState:m1', entityType: 'RugbyGameState', entityId: 'm1', position: '0a0a0a0a:0' } })
  sockets[0].close(1006)
  clock.advance(50)
  await turn()
  sockets[1].open()
  t.match(sockets[1].sent, [{ type: 'subscribe', data: { since: '0a0a0a0a:0' } }], 'since: where it started')
  sockets[1].receive({ type: 'subscribed', id: 'RugbyGameState:m1', data: { subscriptionId: 'RugbyGameState:m1', entityType: 'RugbyGameState', entityId: 'm1', recovered: true } })
  t.same(resyncs, [], 'recovered: nothing to refetch')
  sockets[1].receive({ type: 'notification', data: frameOf('0a0a0a0a:3') })
  // a later reply's position does not take the place of a notification's
  sockets[1].receive({ type: 'subscribed', id: 'RugbyGameState:m1', data: { subscriptionId: 'RugbyGameState:m1', entityType: 'RugbyGameState', entityId: 'm1', position: '0a0a0a0a:1' } })
  sockets[1].close(1006)
  clock.advance(1000)
  await turn()
  sockets[2].open()
  t.match(sockets[2].sent, [{ type: 'subscribe', data: { since: '0a0a0a0a:3' } }], 'the last notification\'s')
})

t.test('the client wires sockets to subscriptions: resubscribed after a reconnect with since; a garbled frame is dropped', async (t) => {
  const clock = fakeClock(t)
  const { WebSocket, sockets } = fakeSockets()
  const c = client(t, { url: 'ws://fake', WebSocket, random: () => 0.5, backoff: { initialMs: 100 } })
  const got: Notification[] = []
  c.subscribe('RugbyGameState', 'm1', { onNotification: (n) => got.push(n) })
  await turn()
  t.equal(sockets[0].sent.length, 0, 'nothing sent before the socket opens')
  sockets[0].open()
  t.match(sockets[0].sent, [{ type: 'subscribe', id: 'RugbyGameState:m1' }])
  sockets[0].receive({ type: 'subscribed', id: 'RugbyGameState:m1', data: { subscriptionId: 'RugbyGameState:m1', entityType: 'RugbyGameState', entityId: 'm1' } })
  sockets[0].onmessage?.({ data: '{"type":"notification"}' })
  sockets[0].onmessage?.({ data: 'not json' })
  sockets[0].receive({ type: 'batch', data: [{ type: 'notification', data: frameOf('0a0a0a0a:7') }, null] })
  t.same(got.map((n) => n.position), ['0a0a0a0a:7'], 'the good frame of the batch arrives, the garbled ones do not throw')

  sockets[0].close(1006)
  t.equal(c.state, 'reconnecting')
  clock.advance(50)
  await turn()
  t.equal(sockets.length, 2, 'retried after the jittered delay')
  sockets[1].open()
  t.match(sockets[1].sent, [{ type: 'subscribe', data: { since: '0a0a0a0a:7' } }], 'with the last position')

  sockets[1].receive({ type: 'error', id: 'RugbyGameState:m1', data: { code: 'rate_limited', error: 'slow down' } })
  clock.advance(750)
  t.equal(sockets[1].sent.length, 2, 'a subscribe refused for rate is sent again')
  sockets[1].close(4403, 'forbidden')
  clock.advance(60_000)
  await turn()
  t.same([c.state, sockets.length], ['closed', 2], '4403: no retry')
})
