/**
 * One contract for every provider's channel history (lib/bus/history.ts): positions of one epoch in publish order,
 * the message delivered live as stored, a change's position carried on its other channels, `after` exact or null
 * (unknown, another epoch, trimmed), `reset` starting a channel again with a new epoch, and `markGap` refusing every
 * resume from before it. `head`: a channel's position now, its start when it has had no message (every later one is
 * after it), its last message's otherwise; `keep`: a watched channel's history outlives its ttl while quiet, and a
 * position held from before still resumes.
 */
import t from 'tap'
import Fastify from 'fastify'
import { randomUUID } from 'node:crypto'
import { createBus, openBroker, type PubSub } from '../../../lib/bus/index.js'
import { resolveOptions } from '../../../lib/options.js'
import { splitPosition } from '../../../lib/bus/history.js'
import { MemoryHistory } from '../../../lib/bus/history-memory.js'
import { NATS_URL, REDIS_URL, requireService } from '../../helpers/brokers.js'
import { until } from '../../helpers/wait.js'

await requireService('Redis')
await requireService('NATS')

type Provider = 'memory' | 'redis' | 'nats'
const urls: Record<Provider, string | undefined> = { memory: undefined, redis: REDIS_URL, nats: NATS_URL }
const limits = { size: 5, ttlSeconds: 60 }

async function busOf (t: { teardown(fn: () => unknown): void }, provider: Provider): Promise<{ bus: PubSub, received: string[] }> {
  const app = Fastify()
  const prefix = `hc-${randomUUID().slice(0, 8)}`
  const options = resolveOptions({ bus: { provider, url: urls[provider], prefix } }).bus
  let bus: PubSub | undefined
  let close = async (): Promise<void> => {}
  await app.register(async (scope) => {
    const broker = await openBroker(scope, options)
    bus = createBus(broker, scope.log, prefix)
    close = async () => { await bus!.close(); await broker.close() }
  })
  await app.ready()
  t.teardown(async () => { await close(); await app.close() })
  const received: string[] = []
  bus!.onMessage((_channel, message) => received.push(message))
  return { bus: bus!, received }
}

for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: the history contract`, async (t) => {
    const { bus, received } = await busOf(t, provider)
    const history = bus.history!
    const [one, feed] = [`hc:Team:${randomUUID()}`, `hc:Team:*:${randomUUID()}`]
    await bus.subscribe([one, feed])
    const positions: string[] = []
    for (let i = 1; i <= 3; i++) {
      const at = (await history.append(one, `m${i}`, limits))!
      positions.push(at)
      t.equal(await history.append(feed, `m${i}`, limits, at), at, 'carried on the change\'s other channel')
    }
    t.ok(positions.every((p) => /^[0-9a-f]{8}:\d+$/.test(p) && p.split(':')[0] === positions[0].split(':')[0]), `one epoch: ${positions.join(' ')}`)
    t.ok(await until(() => received.length === 6), 'delivered live')
    t.same(received.filter((_, i) => i % 2 === 0).map(splitPosition), positions.map((position, i) => ({ position, message: `m${i + 1}` })), 'as stored, with the position')

    t.same(await history.after(one, positions[0], limits), received.filter((_, i) => i % 2 === 0).slice(1), 'after the first: the two later ones, as they went out')
    t.same(await history.after(feed, positions[1], limits), received.filter((_, i) => i % 2 === 1).slice(2), 'a feed by the change\'s position')
    t.same(await history.after(one, positions[2], limits), [], 'nothing missed')
    t.equal(await history.after(one, 'ffffffff:1', limits), null, 'another epoch')
    t.equal(await history.after(one, 'n:42', limits), null, 'not a position')
    t.equal(await history.after(`hc:Team:${randomUUID()}`, positions[0], limits), null, 'another channel')

    for (let i = 4; i <= 12; i++) await history.append(one, `m${i}`, limits)
    if (provider !== 'redis') t.equal(await history.after(one, positions[0], limits), null, 'trimmed past the window')

    await history.markGap()
    const fresh = (await history.append(one, 'after the gap', limits))!
    t.equal(await history.after(one, positions[2], limits), null, 'no resume passes a gap')
    t.same(await history.after(one, fresh, limits), [], 'one from after it does')

    await history.reset(one)
    const again = (await history.append(one, 'again', limits))!
    if (provider !== 'nats') t.not(again.split(':')[0], fresh.split(':')[0], 'a new epoch')
    t.equal(await history.after(one, fresh, limits), null, 'nothing from before the reset')
    t.equal(await history.head(one, limits), again, 'the head: the last message\'s position')
  })

  t.test(`${provider}: a history's head before its first message`, async (t) => {
    const { bus, received } = await busOf(t, provider)
    const history = bus.history!
    const quiet = `hc:Team:${randomUUID()}`
    await bus.subscribe([quiet])
    const start = (await history.head(quiet, limits))!
    t.match(start, /^[0-9a-f]{8}:\d+$/, 'a position, though no message was sent')
    t.equal(await history.head(quiet, limits), start, 'the same one asked again')
    // a burst of subscribes: one start, not one each (each would take a place of the history's size)
    const burst = `hc:Team:${randomUUID()}`
    t.equal(new Set(await Promise.all(Array.from({ length: 50 }, async () => await history.head(burst, limits)))).size, 1, 'many at once: one start')
    t.same(await history.after(burst, (await history.head(burst, limits))!, limits), [], 'and it is held')
    t.same(await history.after(quiet, start, limits), [], 'nothing after it yet')
    const first = (await history.append(quiet, 'first', limits))!
    t.equal(first.split(':')[0], start.split(':')[0], 'the first message is of its epoch')
    t.ok(await until(() => received.length === 1), 'the start went out to no one')
    t.same(await history.after(quiet, start, limits), received, 'the first message is after it')
    await history.markGap()
    t.equal(await history.after(quiet, start, limits), null, 'no resume passes a gap')
  })
}

for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: a watched channel's history is kept while it is quiet`, async (t) => {
    const { bus } = await busOf(t, provider)
    const history = bus.history!
    const short = { size: 5, ttlSeconds: 1 }
    const [kept, left] = [`hc:Team:${randomUUID()}`, `hc:Team:${randomUUID()}`]
    const keptAt = (await history.append(kept, 'k1', short))!
    const leftAt = (await history.append(left, 'l1', short))!
    // kept every third of its ttl, as lib/bus/history.ts keepHistories does, until the other one expired
    const timer = setInterval(() => { void history.keep([kept], short) }, 333)
    t.teardown(() => clearInterval(timer))
    t.ok(await until(async () => await history.after(left, leftAt, short) === null, 10_000), 'the channel not kept expired')
    t.same(await history.after(kept, keptAt, short), [], 'the kept one resumes from its last message: nothing missed')
    t.equal(await history.head(kept, short), keptAt, 'its head is still that message\'s position')
    const next = (await history.append(kept, 'k2', short))!
    t.same((await history.after(kept, keptAt, short))?.map((m) => splitPosition(m).position), [next], 'then what came after it')
  })
}

t.test('memory: a quiet channel\'s ring is dropped after its ttl, and what it held is counted', async (t) => {
  let now = 1000
  const history = new MemoryHistory(async () => {}, () => now)
  t.teardown(() => history.close())
  const at = (await history.append('c', 'x'.repeat(100), { size: 2, ttlSeconds: 1 }))!
  await history.append('d', 'y', { size: 2, ttlSeconds: 10 })
  t.ok(history.bytes > 100)
  now += 1500
  t.equal(await history.after('c', at), null, 'expired')
  history.sweep()
  t.ok(history.bytes < 100, 'dropped by the sweep')
  const next = (await history.append('c', 'z', { size: 2, ttlSeconds: 1 }))!
  t.not(next.split(':')[0], at.split(':')[0], 'a new epoch after it expired')
})

for (const provider of ['redis', 'nats'] as Provider[]) {
  t.test(`${provider}: a change published again under its key (a new leader's) is found, not published twice`, async (t) => {
    const { bus, received } = await busOf(t, provider)
    const history = bus.history!
    const [one, feed] = [`hc:Team:${randomUUID()}`, `hc:Team:*:${randomUUID()}`]
    await bus.subscribe([one, feed])
    const first = (await history.append(one, 'm1', limits, undefined, { key: 'k1', check: false }))!
    await history.append(feed, 'm1', limits, first, { key: 'k1', check: false })
    // the old leader went on to publish m2 on the entity's channel, and stopped before its feed
    const second = (await history.append(one, 'm2', limits, undefined, { key: 'k2', check: false }))!
    t.equal(await history.append(one, 'm1', limits, undefined, { key: 'k1', check: true }), first, 'found: the position it went out at')
    t.equal(await history.append(feed, 'm1', limits, first, { key: 'k1', check: true }), first, 'found on the other channel too')
    t.equal(await history.append(one, 'm2', limits, undefined, { key: 'k2', check: true }), second)
    t.equal(await history.append(feed, 'm2', limits, second, { key: 'k2', check: true }), second, 'published where it was missing, at its position')
    const third = (await history.append(one, 'm3', limits, undefined, { key: 'k3', check: true }))!
    t.not(third, second, 'a change not published before goes out')
    // NATS: a stored message that is its subject's last may not have gone out live (the old leader died between the
    // store and the publish): it goes out again at its own position, which instances that delivered it drop
    const expected = provider === 'nats' ? ['m1', 'm1', 'm2', 'm1', 'm2', 'm2', 'm3'] : ['m1', 'm1', 'm2', 'm2', 'm3']
    t.ok(await until(() => received.length >= expected.length), 'delivered live')
    t.same(received.map((m) => splitPosition(m).message), expected, 'each once on each channel, or again at its position')
    t.same(new Set(received.map((m) => splitPosition(m).position)).size, 3, 'three changes, three positions')
    t.same((await history.after(one, first, limits))?.map((m) => splitPosition(m).message), ['m2', 'm3'], 'stored once')
    t.same((await history.after(feed, first, limits))?.map((m) => splitPosition(m).message), ['m2'])
  })
}
