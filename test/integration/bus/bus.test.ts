/**
 * One contract for every bus provider (memory, redis, nats) and its interest store: delivery and order per
 * channel, idempotent subscribe, unsubscribe, close, interest across instances, and recovery from a broker restart.
 */
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { randomUUID } from 'node:crypto'
import { createBus, openBroker, type PubSub } from '../../../lib/bus/index.js'
import { createInterest, type InterestStore } from '../../../lib/interest/index.js'
import { LocalSubscriptionStore } from '../../../lib/interest/local.js'
import { resolveOptions } from '../../../lib/options.js'
import { NATS_URL, REDIS_URL, ownBroker, requireService } from '../../helpers/brokers.js'
import { sleep, until } from '../../helpers/wait.js'
import { Redis } from 'ioredis'

type Provider = 'memory' | 'redis' | 'nats'
interface Received { channel: string, message: string }
/** the bus and the interest store on one broker, as the plugin makes them */
interface BusParts { bus: PubSub, interest: InterestStore, close(): Promise<void> }
interface Instance { parts: BusParts, received: Received[], gaps: string[], local: LocalSubscriptionStore<unknown>, app: FastifyInstance }
interface Teardown { teardown(fn: () => unknown): void }

async function instance (t: Teardown, provider: Provider, url: string | undefined, prefix: string): Promise<Instance> {
  const app = Fastify()
  const received: Received[] = []
  const gaps: string[] = []
  const local = new LocalSubscriptionStore<unknown>()
  let parts: BusParts | undefined
  const bus = resolveOptions({ bus: { provider, url, prefix, instanceTtlSeconds: 2 } }).bus
  await app.register(async (scope) => {
    const broker = await openBroker(scope, bus)
    const made = createBus(broker, scope.log)
    made.onMessage((channel, message) => received.push({ channel, message }))
    made.onGap((r) => gaps.push(r))
    const interest = await createInterest(broker, bus, randomUUID(), local, scope.log)
    let closed = false
    parts = {
      bus: made,
      interest,
      close: async () => {
        if (closed) return
        closed = true
        await interest.close()
        await made.close()
        await broker.close()
      }
    }
  })
  await app.ready()
  t.teardown(async () => { await parts!.close(); await app.close() })
  return { parts: parts!, received, gaps, local, app }
}

await requireService('Redis')
await requireService('NATS')
const urls: Record<Provider, string | undefined> = { memory: undefined, redis: REDIS_URL, nats: NATS_URL }

for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: the bus contract`, async (t) => {
    const prefix = `contract-${randomUUID().slice(0, 8)}`
    const a = await instance(t, provider, urls[provider], prefix)
    // memory is one process: publisher and subscriber are the same instance
    const b = provider === 'memory' ? a : await instance(t, provider, urls[provider], prefix)
    const [one, two, other] = [`${prefix}:Team:1`, `${prefix}:Team:2`, `${prefix}:Team:3`]

    await b.parts.bus.subscribe([one])
    await b.parts.bus.subscribe([one])
    await b.parts.bus.subscribe([two])
    for (let i = 0; i < 500; i++) {
      await a.parts.bus.publish(one, `one-${i}`)
      await a.parts.bus.publish(two, `two-${i}`)
      await a.parts.bus.publish(other, `other-${i}`)
    }
    // markers: a channel keeps one publisher's order, so once a channel's last message is in, so is all before it
    await a.parts.bus.publish(one, 'end')
    await a.parts.bus.publish(two, 'end')
    t.ok(await until(() => b.received.filter((m) => m.message === 'end').length === 2), 'delivered')
    const messagesOf = (channel: string): string[] => b.received.filter((m) => m.channel === channel && m.message !== 'end').map((m) => m.message)
    t.same(messagesOf(one), Array.from({ length: 500 }, (_, i) => `one-${i}`), 'in order, once, despite two subscribes')
    t.same(messagesOf(two), Array.from({ length: 500 }, (_, i) => `two-${i}`))
    t.equal(b.received.filter((m) => m.channel === other).length, 0, 'nothing from channels not subscribed')

    await b.parts.bus.unsubscribe([one])
    b.received.length = 0
    await a.parts.bus.publish(one, 'after-unsubscribe')
    await a.parts.bus.publish(two, 'marker')
    t.ok(await until(() => b.received.some((m) => m.message === 'marker')))
    t.same(b.received.map((m) => m.message), ['marker'], 'unsubscribed channels stay quiet')
    t.ok(a.parts.bus.ready && b.parts.bus.ready, 'ready while connected')

    if (b !== a) await a.parts.bus.subscribe([two])
    await b.parts.close()
    b.received.length = 0
    a.received.length = 0
    await a.parts.bus.publish(two, 'after-close').catch(() => {})
    if (b !== a) {
      // b has no connection left to carry a marker, so the absence is bounded, not ordered: a witnesses that the
      // broker sent the message, and b's closing connection gets a moment to deliver what it still holds
      t.ok(await until(() => a.received.some((m) => m.message === 'after-close')), 'the broker sent it')
      await sleep(100)
    }
    t.same(b.received, [], 'nothing is delivered after close')
    t.notOk(b.parts.bus.ready, 'not ready after close')
  })

  t.test(`${provider}: interest across instances`, async (t) => {
    const prefix = `interest-${randomUUID().slice(0, 8)}`
    const a = await instance(t, provider, urls[provider], prefix)
    const b = provider === 'memory' ? a : await instance(t, provider, urls[provider], prefix)
    const channel = `${prefix}:Team:t1`
    t.equal(await b.parts.interest.isWatched(channel), false)
    a.local.add(channel, 'Team', 't1', null, 'socket-1')
    await a.parts.interest.update([{ channel, entityType: 'Team', count: 1 }])
    t.equal(await b.parts.interest.isWatched(channel), true, 'the first watcher is visible at once')
    if (b !== a) {
      b.local.add(channel, 'Team', 't1', null, 'socket-2')
      b.local.add(channel, 'Team', 't1', null, 'socket-3')
      await b.parts.interest.update([{ channel, entityType: 'Team', count: 1 }])
      await b.parts.interest.update([{ channel, entityType: 'Team', count: 2 }])
      t.ok(await until(async () => await a.parts.interest.watchers(channel) === 3), 'counts add up across instances')
      t.ok(await until(async () => (await a.parts.interest.totals()).Team === 3), 'totals per type')
      b.local.remove(channel, 'socket-2')
      b.local.remove(channel, 'socket-3')
      await b.parts.interest.update([{ channel, entityType: 'Team', count: 0 }])
    }
    a.local.remove(channel, 'socket-1')
    await a.parts.interest.update([{ channel, entityType: 'Team', count: 0 }])
    t.equal(await b.parts.interest.isWatched(channel), false, 'the last one leaving is visible at once')
  })
}

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: a broker restart is a gap; subscriptions and interest come back`, async (t) => {
    const broker = await ownBroker(t, provider)
    const prefix = `restart-${randomUUID().slice(0, 8)}`
    const a = await instance(t, provider, broker.url, prefix)
    const b = await instance(t, provider, broker.url, prefix)
    const channel = `${prefix}:Team:r1`
    await b.parts.bus.subscribe([channel])
    b.local.add(channel, 'Team', 'r1', null, 'socket')
    await b.parts.interest.update([{ channel, entityType: 'Team', count: 1 }])

    await broker.stop()
    t.ok(await until(() => !a.parts.bus.ready && !b.parts.bus.ready), 'not ready while the broker is down')
    await broker.start()
    t.ok(await until(() => b.gaps.includes('bus_gap'), 10_000), 'the outage is reported as a gap')
    t.ok(await until(() => a.parts.bus.ready && b.parts.bus.ready, 10_000), 'ready again')
    t.ok(await until(async () => await Promise.resolve(a.parts.interest.isWatched(channel)).catch(() => false), 10_000), 'interest is written again after the broker lost it')
    t.ok(await until(async () => {
      await a.parts.bus.publish(channel, 'after-restart').catch(() => {})
      return b.received.some((m) => m.message === 'after-restart')
    }, 10_000), 'the subscription works again')
  })
}

t.test('redis: the cluster keys expire with the instances that renew them, and the last to stop leaves none', async (t) => {
  const prefix = `keys-${randomUUID().slice(0, 8)}`
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const keys = async (): Promise<string[]> => (await redis.keys(`{${prefix}}:cluster:*`)).sort()
  const a = await instance(t, 'redis', REDIS_URL, prefix)
  const b = await instance(t, 'redis', REDIS_URL, prefix)
  const channel = `${prefix}:Team:k1`
  a.local.add(channel, 'Team', 'k1', null, 'socket')
  await a.parts.interest.update([{ channel, entityType: 'Team', count: 1 }])
  t.ok(await until(async () => (await b.parts.interest.totals()).Team === 1), 'the type is counted across the cluster')
  const types = `{${prefix}}:cluster:types`
  const ttl = await redis.pttl(types)
  t.ok(ttl > 0 && ttl <= 2000, `the list of types expires unless renewed (${ttl} ms left)`)
  a.local.remove(channel, 'socket')
  await a.parts.interest.update([{ channel, entityType: 'Team', count: 0 }])
  await a.parts.close()
  await b.parts.close()
  t.same(await keys(), [], 'every instance stopped: nothing of the cluster is left in Redis')
})
