/**
 * Randomized churn on three instances sharing one broker, for Redis and for NATS: anonymous sockets subscribe,
 * unsubscribe, close and reconnect at random over a few hundred entities, sending requests without waiting for
 * replies. Once every request is answered (each with its one right reply), the instances hold exactly the
 * subscriptions the sockets asked for, and the cluster's interest store counts them; each entity then changes once:
 * every socket that still watches it gets that notification exactly once, and no other socket gets it (a fence
 * published behind the changes by every instance tells when nothing more can come). Once every socket is closed,
 * nothing is left: no connection, no bus subscription, no local subscription, no watcher count, no interest anywhere
 * in the cluster.
 *
 * The run is drawn from a seed (CHURN_SEED, printed); the same seed makes the same requests, timing aside.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { TestClient, type Frame } from '../../helpers/client.js'
import { ownBroker } from '../../helpers/brokers.js'
import { sleep, until } from '../../helpers/wait.js'

const SEED = Number(process.env.CHURN_SEED ?? 20251008)
const INSTANCES = 3
const SOCKETS_PER_INSTANCE = 30
const ENTITIES = 300
/** random steps (requests, closes, reconnects): a few seconds here; a count, not a time, so a seed repeats a run */
const STEPS = Number(process.env.CHURN_STEPS ?? 6000)
/** steps taken between two turns of the event loop */
const BURST = 25

const TYPE = 'Score'
/** watched by every socket after the churn: its notification, published by each instance after its share of the
 * changes, tells a socket that everything published before it on that instance has reached it */
const FENCE = 'Fence'

/** mulberry32: a small seeded PRNG */
function seededRandom (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const entityId = (n: number): string => `e-${n}`

/** One socket of the run, and what it should watch: its requests, in the order sent, applied to an empty set. */
class ChurnSocket {
  readonly opening: Promise<TestClient>
  readonly watched = new Set<string>()
  /** request id → what the reply must be */
  readonly requests = new Map<string, { type: 'subscribed' | 'unsubscribed', subscriptionId: string }>()
  private sent = 0

  constructor (readonly name: string, readonly instance: number, url: string) {
    this.opening = TestClient.open(url)
  }

  /** Sends once open; frames keep the order of the calls (callbacks of one promise run in order). */
  private send (frame: Frame): void {
    void this.opening.then((c) => c.send(frame))
  }

  subscribe (id: string, watchers: boolean): void {
    const requestId = `${this.name}.${this.sent++}`
    this.requests.set(requestId, { type: 'subscribed', subscriptionId: `${TYPE}:${id}` })
    this.watched.add(id)
    this.send({ type: 'subscribe', id: requestId, data: watchers ? { entityType: TYPE, entityId: id, watchers } : { entityType: TYPE, entityId: id } })
  }

  unsubscribe (id: string, bySubscriptionId: boolean): void {
    const requestId = `${this.name}.${this.sent++}`
    this.requests.set(requestId, { type: 'unsubscribed', subscriptionId: `${TYPE}:${id}` })
    this.watched.delete(id)
    this.send({ type: 'unsubscribe', id: requestId, data: bySubscriptionId ? { subscriptionId: `${TYPE}:${id}` } : { entityType: TYPE, entityId: id } })
  }

  close (): void {
    void this.opening.then((c) => c.close())
  }
}

/** What went wrong for one socket: replies missing, repeated or wrong, and frames that should not have come. */
function replyProblems (socket: ChurnSocket, messages: readonly Frame[]): string[] {
  const problems: string[] = []
  const seen = new Set<string>()
  for (const m of messages) {
    if (m.type === 'notification' || m.type === 'watchers') continue
    const id = String(m.id)
    const expected = socket.requests.get(id)
    if (expected === undefined) {
      problems.push(`${socket.name}: unexpected ${JSON.stringify(m).slice(0, 200)}`)
    } else if (seen.has(id)) {
      problems.push(`${socket.name}: a second reply to ${id}`)
    } else if (m.type !== expected.type || m.data?.subscriptionId !== expected.subscriptionId) {
      problems.push(`${socket.name}: ${id} answered ${JSON.stringify(m).slice(0, 200)}, expected ${expected.type} ${expected.subscriptionId}`)
    }
    seen.add(id)
  }
  for (const id of socket.requests.keys()) if (!seen.has(id)) problems.push(`${socket.name}: no reply to ${id}`)
  return problems
}

const answered = (socket: ChurnSocket, client: TestClient): boolean => {
  let replies = 0
  for (const m of client.messages) if (m.id !== undefined) replies++
  return replies >= socket.requests.size
}

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: random churn on three instances; exactly the watchers are notified; nothing leaks`, async (t) => {
    const broker = await ownBroker(t, provider)
    const prefix = `churn-${randomUUID().slice(0, 8)}`
    const options = {
      entities: { [TYPE]: { access: 'public' as const }, [FENCE]: { access: 'public' as const, payload: 'full' as const } },
      bus: { provider, url: broker.url, prefix },
      limits: { subscribeRatePerSecond: 1_000_000, maxSubscriptionsPerConnection: ENTITIES + 1, maxConnectionsPerIp: 10_000 }
    }
    const instances: RunningApp[] = []
    for (let i = 0; i < INSTANCES; i++) instances.push(await startApp(t, options))
    const apps = instances.map((i) => i.app)

    const random = seededRandom(SEED)
    const below = (n: number): number => Math.floor(random() * n)
    t.comment(`seed ${SEED} (CHURN_SEED=${SEED} repeats this run)`)
    let generation = 0
    const all: ChurnSocket[] = []
    const open = (slot: number, instance: number): ChurnSocket => {
      const socket = new ChurnSocket(`s${slot}g${generation++}`, instance, instances[instance].url)
      all.push(socket)
      return socket
    }
    t.teardown(async () => { for (const s of all) s.close() })
    const slots = Array.from({ length: INSTANCES * SOCKETS_PER_INSTANCE }, (_, slot) => open(slot, slot % INSTANCES))

    // the churn
    const started = Date.now()
    for (let step = 0; step < STEPS; step += BURST) {
      for (let b = 0; b < BURST; b++) {
        const slot = below(slots.length)
        const socket = slots[slot]
        const roll = random()
        if (roll < 0.6) {
          socket.subscribe(entityId(below(ENTITIES)), random() < 0.15)
        } else if (roll < 0.975) {
          const watched = [...socket.watched]
          // mostly what it watches; now and then something it does not
          const id = watched.length > 0 && random() < 0.85 ? watched[below(watched.length)] : entityId(below(ENTITIES))
          socket.unsubscribe(id, random() < 0.5)
        } else if (roll < 0.99) {
          // a reconnect, perhaps to another instance: the client resubscribes what it watched, at once
          socket.close()
          const next = slots[slot] = open(slot, below(INSTANCES))
          for (const id of socket.watched) next.subscribe(id, false)
        } else {
          // closed with its requests still on their way; a fresh socket takes its place
          socket.close()
          slots[slot] = open(slot, below(INSTANCES))
        }
      }
      await sleep(1)
    }
    const requests = all.reduce((n, s) => n + s.requests.size, 0)
    t.comment(`${STEPS} steps, ${requests} requests, ${all.length} sockets in ${Date.now() - started} ms`)

    // settle: every request of a socket still open is answered, and every socket closed is gone from the servers
    const clients = await Promise.all(slots.map(async (s) => await s.opening))
    t.ok(await until(() => slots.every((s, i) => answered(s, clients[i])), 30_000), 'every request is answered')
    const problems = slots.flatMap((s, i) => replyProblems(s, clients[i].messages))
    t.same(problems.slice(0, 10), [], `every request got exactly its one reply (${problems.length} problems)`)
    await Promise.all(all.filter((s) => !slots.includes(s)).map(async (s) => await (await s.opening).closed))
    const connections = (): number => apps.reduce((n, app) => n + app.changefeed.stats().connections.active, 0)
    t.ok(await until(() => connections() === slots.length, 10_000), 'the servers hold the sockets still open, no other')

    // the cluster agrees with the model: locally at once, in the cluster's store after its batched writes
    const model = new Map<string, number>()
    for (const s of slots) for (const id of s.watched) model.set(id, (model.get(id) ?? 0) + 1)
    const total = [...model.values()].reduce((a, b) => a + b, 0)
    t.equal(apps.reduce((n, app) => n + app.changefeed.stats().subscriptions.active, 0), total, `${total} subscriptions held across the instances`)
    t.ok(await until(async () => (await apps[0].changefeed.totals())[TYPE] === total, 5000), 'the cluster counts them all')
    const sample = Array.from({ length: 20 }, () => entityId(below(ENTITIES)))
    t.ok(await until(async () => {
      for (const [j, id] of sample.entries()) if (await apps[j % INSTANCES].changefeed.watchers(TYPE, id) !== (model.get(id) ?? 0)) return false
      return true
    }, 5000), 'watcher counts of a sample of entities match')

    // every entity changes once, published by an instance drawn at random; then each instance publishes the fence
    for (const c of clients) c.messages.length = 0
    for (const c of clients) c.send({ type: 'subscribe', id: 'fence', data: { entityType: FENCE, entityId: 'fence' } })
    t.ok(await until(() => clients.every((c) => c.messages.some((m) => m.id === 'fence' && m.type === 'subscribed')), 10_000), 'every socket watches the fence')
    for (const c of clients) c.messages.length = 0
    const shares: number[][] = instances.map(() => [])
    for (let n = 0; n < ENTITIES; n++) shares[below(INSTANCES)].push(n)
    await Promise.all(shares.map(async (share, i) => {
      await Promise.all(share.map(async (n) => await apps[i].changefeed.publish({ entityType: TYPE, entityId: entityId(n), changeType: 'updated' })))
      await apps[i].changefeed.publish({ entityType: FENCE, entityId: 'fence', changeType: 'updated', payload: { from: i } })
    }))
    // a bus delivers one publisher's messages to a subscriber in order, and an instance writes them to a socket in
    // order: behind the fence of every instance, nothing more of the changes can come to that socket
    const fences = (c: TestClient): Frame[] => c.messages.filter((m) => m.type === 'notification' && m.data.entityType === FENCE)
    t.ok(await until(() => clients.every((c) => fences(c).length >= INSTANCES), 10_000), 'every socket got the fence of every instance')

    const missing: string[] = []
    const unexpected: string[] = []
    const repeated: string[] = []
    let delivered = 0
    for (const [i, socket] of slots.entries()) {
      const got = new Map<string, number>()
      for (const m of clients[i].messages) {
        if (m.type !== 'notification' || m.data.entityType !== TYPE) continue
        got.set(m.data.entityId, (got.get(m.data.entityId) ?? 0) + 1)
        delivered++
      }
      for (const id of socket.watched) if (!got.has(id)) missing.push(`${socket.name}:${id}`)
      for (const [id, n] of got) {
        if (!socket.watched.has(id)) unexpected.push(`${socket.name}:${id}`)
        else if (n > 1) repeated.push(`${socket.name}:${id}×${n}`)
      }
    }
    t.comment(`${delivered} notifications delivered to ${slots.length} sockets`)
    t.same(missing.slice(0, 10), [], `no watcher missed its entity's change (${missing.length} missing)`)
    t.same(unexpected.slice(0, 10), [], `no socket got a change it does not watch (${unexpected.length} unexpected)`)
    t.same(repeated.slice(0, 10), [], `none twice (${repeated.length} repeated)`)
    t.same(clients.map((c) => fences(c).length), clients.map(() => INSTANCES), 'each fence once')
    const stray = clients.flatMap((c) => c.messages.filter((m) => m.type !== 'notification' && m.type !== 'watchers'))
    t.same(stray.slice(0, 5), [], 'no other frame (no error, no resync)')

    // every socket closes: nothing is left anywhere
    for (const s of slots) s.close()
    await Promise.all(clients.map(async (c) => await c.closed))
    const stats = (): Array<{ connections: number, subscriptions: number, channels: number, counted: number }> => apps.map((app) => {
      const s = app.changefeed.stats()
      return { connections: s.connections.active, subscriptions: s.subscriptions.active, channels: s.bus.channels, counted: s.subscriptions.counted }
    })
    const none = apps.map(() => ({ connections: 0, subscriptions: 0, channels: 0, counted: 0 }))
    await until(() => JSON.stringify(stats()) === JSON.stringify(none), 10_000)
    t.same(stats(), none, 'no connection, subscription, bus subscription or watcher count is left on any instance')
    const clusterEmpty = async (): Promise<boolean> => {
      for (const app of apps) if (Object.keys(await app.changefeed.totals()).length > 0) return false
      for (const [j, id] of sample.entries()) if (await apps[j % INSTANCES].changefeed.watchers(TYPE, id) !== 0) return false
      return await apps[0].changefeed.watchers(FENCE, 'fence') === 0
    }
    t.ok(await until(clusterEmpty, 10_000), 'no interest is left in the cluster')
  })
}
