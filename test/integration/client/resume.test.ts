/**
 * The SDK resuming from the bus's history, end to end on two instances behind Redis: after its TCP connection is cut
 * (no close frame) it reconnects to the other URL, resumes every subscription (an entity, a feed) with `since`, and
 * hands the application what it missed, in order, once, with no `onResync`. Then a deploy: `drain()` closes every
 * socket with 1012 and a reconnect hint, refuses new ones and turns readiness off; the clients come back on the other
 * instance and resume. And the standalone server drains on SIGTERM.
 */
import t from 'tap'
import WebSocket from 'ws'
import { randomUUID } from 'node:crypto'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ChangefeedClient, type Notification, type StateChange } from '../../../lib/client/index.js'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { TestClient } from '../../helpers/client.js'
import { REDIS_URL, requireService } from '../../helpers/brokers.js'
import { serve } from '../../helpers/serve.js'
import { until } from '../../helpers/wait.js'
import { retryHintOf } from '../../../lib/protocol/index.js'

await requireService('Redis')

const entities = { Score: { access: 'public' as const, payload: 'full' as const, feed: true } }

async function cluster (t: { teardown(fn: () => unknown): void }): Promise<[RunningApp, RunningApp]> {
  const options = { entities, bus: { provider: 'redis' as const, url: REDIS_URL, prefix: `resume-${randomUUID().slice(0, 8)}` }, shutdown: { drainSeconds: 0.3 } }
  return [await startApp(t, options), await startApp(t, options)]
}

/** An SDK client on ws, its sockets tracked (to cut one), recording what the application is handed. */
function sdk (t: { teardown(fn: () => unknown): void }, urls: string[]): { client: ChangefeedClient, sockets: WebSocket[], entity: number[], feed: number[], resyncs: string[], states: StateChange[] } {
  const sockets: WebSocket[] = []
  class Tracked extends WebSocket {
    constructor (address: string) {
      super(address)
      sockets.push(this)
    }
  }
  // no jitter on the backoff: the first URL is the first instance's
  const client = new ChangefeedClient({ url: urls, WebSocket: Tracked as never, backoff: { initialMs: 20, maxMs: 50 }, random: () => 0 })
  t.teardown(() => client.destroy())
  const got = { client, sockets, entity: [] as number[], feed: [] as number[], resyncs: [] as string[], states: [] as StateChange[] }
  client.onState((s) => got.states.push(s))
  const n = (m: Notification): number => (m.payload as { n: number }).n
  client.subscribe('Score', 'm1', { onNotification: (m) => got.entity.push(n(m)), onResync: (r) => got.resyncs.push(`entity ${r}`) })
  client.subscribe('Score', '*', { onNotification: (m) => got.feed.push(n(m)), onResync: (r) => got.resyncs.push(`feed ${r}`) })
  return got
}

const score = async (app: RunningApp, id: string, n: number): Promise<void> => {
  await app.app.changefeed.publish({ entityType: 'Score', entityId: id, changeType: 'updated', payload: { n } })
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)

t.test('a cut connection: the SDK resumes on the other instance, every subscription, with nothing missed and no onResync', async (t) => {
  const [a, b] = await cluster(t)
  const c = sdk(t, [a.url, b.url])
  t.ok(await until(() => a.app.changefeed.stats().subscriptions.active === 2), 'subscribed on the first instance')
  t.ok(await until(async () => await a.app.changefeed.watchers('Score', 'm1') === 1))
  for (const n of range(1, 3)) await score(a, n === 2 ? 'other' : 'm1', n)
  t.ok(await until(() => c.feed.length === 3))
  // the TCP connection ends without a close frame
  const socket = c.sockets.at(-1) as unknown as { _socket: { destroy(): void } }
  socket._socket.destroy()
  t.ok(await until(() => c.states.some((s) => s.to === 'reconnecting')), 'the client noticed')
  for (const n of range(4, 8)) await score(a, n % 2 === 0 ? 'other' : 'm1', n)
  t.ok(await until(() => b.app.changefeed.stats().subscriptions.active === 2, 10_000), 'resubscribed on the other instance')
  for (const n of range(9, 10)) await score(a, 'm1', n)
  t.ok(await until(() => c.feed.length === 10 && c.entity.includes(10), 10_000), `everything arrives (${JSON.stringify([c.feed, c.entity])})`)
  t.same(c.feed, range(1, 10), 'the feed: in order, once each')
  t.same(c.entity, [1, 3, 5, 7, 9, 10], 'the entity: in order, once each')
  t.same(c.resyncs, [], 'no refetch asked for')
  t.equal(b.app.changefeed.stats().connections.resumes.recovered, 2, 'both resumed from the history')
  t.equal(a.app.changefeed.stats().router.documentReads + b.app.changefeed.stats().router.documentReads, 0, 'no database read')
})

t.test('drain: 1012 with a hint, slices, no new sockets, readiness off; the clients resume on the other instance', async (t) => {
  const [a, b] = await cluster(t)
  const clients = Array.from({ length: 6 }, () => sdk(t, [a.url, b.url]))
  const raw = await a.client()
  t.ok(await until(() => a.app.changefeed.stats().subscriptions.active === 12), 'all on the first instance')
  await score(a, 'm1', 1)
  t.ok(await until(() => clients.every((c) => c.entity.length === 1)))
  const drained = a.app.changefeed.drain()
  t.equal(a.app.changefeed.health().ready, false, 'not ready while draining')
  const late = await TestClient.open(a.url)
  const refused = await late.closed
  t.equal(refused.code, 1012, 'a new socket is closed at once')
  await drained
  const { code, reason } = await raw.closed
  t.equal(code, 1012, 'service restart')
  t.ok((retryHintOf(reason) ?? -1) > 0, `the reason says when to come back: ${reason}`)
  await score(a, 'm1', 2)
  t.ok(await until(() => b.app.changefeed.stats().subscriptions.active === 12, 10_000), 'every client came back, on the other instance')
  await score(b, 'm1', 3)
  t.ok(await until(() => clients.every((c) => c.entity.length === 3), 10_000), 'and got what was published meanwhile')
  t.ok(clients.every((c) => c.entity.join() === '1,2,3' && c.resyncs.length === 0), 'in order, once, with no refetch')
  const waits = clients.map((c) => c.states.find((s) => s.code === 1012)?.nextRetryMs)
  t.ok(waits.every((w) => w !== undefined && w >= (retryHintOf(reason) ?? 0)), `each waited the hint before reconnecting (${waits.join(', ')} ms)`)
})

t.test('the standalone server drains on SIGTERM, then exits', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'changefeed-drain-'))
  const config = join(dir, 'config.json')
  writeFileSync(config, JSON.stringify({ server: { port: 0 }, databases: [{ name: 'main', url: 'pglite://memory' }], entities, shutdown: { drainSeconds: 0.2 } }))
  const server = serve(t, ['--config', config])
  const http = await server.address
  const ws = await TestClient.open(http.replace('http', 'ws') + '/ws')
  t.equal((await ws.subscribe('Score', 'x')).type, 'subscribed')
  server.child.kill('SIGTERM')
  const { code, reason } = await ws.closed
  t.equal(code, 1012)
  t.ok(retryHintOf(reason) !== null, reason)
  t.same(await server.exit, { code: 0, signal: null }, 'exits cleanly')
  t.match(server.stdout(), /draining/, 'says so')
})
