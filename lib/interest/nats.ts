/**
 * The cluster interest store in a JetStream key-value bucket (`<prefix>_interest`), beside the NATS bus
 * (lib/bus/nats.ts) on its connection. KV key parts use base64url:
 *   w.<channel>.<instanceId>  that instance's watchers     t.<Type>.<instanceId>  its subscriptions of the type
 *   i.<instanceId>            { expiresAt }
 * An instance writes only its own keys, each with one put (no read, no compare-and-set: nats-server 2.9 has no
 * batch, so a first watcher costs one round trip, and many go out at once). Every instance follows the whole bucket
 * into memory through a KV watch, and answers from there once the watch has caught up with the stream.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { JetStreamManager, KV, NatsConnection, Subscription } from 'nats'
import type { LocalSnapshot } from './interest.js'
import { ClusterInterest } from './cluster.js'
import { BucketView } from './nats-bucket.js'

const encoder = new TextEncoder()
const keyPart = (s: string): string => Buffer.from(s).toString('base64url')

/** The bucket nats.js returns: its KV interface leaves out purgeDeletes, which the implementation has. */
type Bucket = KV & { purgeDeletes(olderMillis?: number): Promise<unknown> }

const CLOSE_CLEANUP_MS = 2000
/** interest keys written at once */
const WRITE_CONCURRENCY = 1024
/** markers of removed keys are dropped every this many heartbeats, once they are this old */
const PURGE_EVERY_BEATS = 10
const PURGE_MARKERS_AFTER_MS = 5000
const REWATCH_MS = 1000

export class NatsInterest extends ClusterInterest {
  private kv!: Bucket
  private jsm!: JetStreamManager
  private stream = ''
  private registered = false
  private beats = 0
  private closed = false
  /** the bucket in memory; replaced whole when the watch starts again */
  private view: BucketView | null = null
  /** bumped by every (re)start of the watch: a slower older one is dropped */
  private generation = 0
  /** writes on their way: close() waits for them, so that none lands after its cleanup */
  private readonly writing = new Set<Promise<unknown>>()
  private purgedSubscription: Subscription | null = null

  constructor (private readonly nc: NatsConnection, private readonly prefix: string, instanceId: string, ttlMs: number, snapshot: LocalSnapshot, log: FastifyBaseLogger) {
    super(instanceId, ttlMs, snapshot, log)
  }

  /** Opens the bucket and follows it into memory (enough to answer questions); start() also registers this instance. */
  async open (): Promise<void> {
    const bucket = `${this.prefix.replace(/[^A-Za-z0-9_-]/g, '_')}_interest`
    this.kv = await this.nc.jetstream().views.kv(bucket, { history: 1 }) as Bucket
    this.jsm = await this.nc.jetstreamManager({ checkAPI: false })
    this.stream = `KV_${bucket}`
    // nats-server before 2.9.13 moves every consumer past a purged subject's sequence, other subjects' entries not
    // yet delivered included: after a purge every instance reads the bucket again
    this.purgedSubscription = this.nc.subscribe(`_changefeed.${bucket}.purged`, { callback: () => { this.follow().catch(() => this.rewatch()) } })
    await this.follow()
    void this.rewatchOnReconnect()
  }

  async start (): Promise<void> {
    await this.open()
    await this.heartbeat()
    this.startTimers()
  }

  private readonly watchKey = (channel: string): string => `w.${keyPart(channel)}.${this.instanceId}`
  private readonly typeKey = (type: string): string => `t.${keyPart(type)}.${this.instanceId}`

  /** (Re)starts the watch of every key; the new view replaces the old once it holds the bucket's current state. */
  private async follow (): Promise<void> {
    const generation = ++this.generation
    const { state } = (await this.kv.status()).streamInfo
    const view = new BucketView(await this.kv.watch({ key: '>' }))
    void view.run((err) => {
      if (err !== undefined) this.log.warn({ err: err.message }, 'changefeed: NATS interest watch failed')
      if (this.view === view && !this.closed) this.rewatch()
    })
    await view.reached(state)
    if (generation !== this.generation || this.closed || view.ended) {
      view.stop()
      if (generation === this.generation && !this.closed) throw new Error('the interest watch ended')
      return
    }
    this.view?.stop()
    this.view = view
  }

  private rewatch (): void {
    setTimeout(() => {
      if (!this.closed) this.follow().catch(() => this.rewatch())
    }, REWATCH_MS).unref()
  }

  /** The consumer behind the watch does not outlive the server's restart: a new one at once, instead of after the
   * missed heartbeats nats.js waits for. */
  private async rewatchOnReconnect (): Promise<void> {
    for await (const status of this.nc.status()) {
      if (this.closed) return
      if (status.type === 'reconnect') this.follow().catch(() => this.rewatch())
    }
  }

  /**
   * The view, once it has applied every write the stream held when called (a write another instance saw
   * acknowledged is then in memory here); null when that took longer than CATCH_UP_MS.
   */
  private async caughtUp (): Promise<BucketView | null> {
    const view = this.view
    const { state } = (await this.kv.status()).streamInfo
    return view !== null && await view.reached(state) ? view : null
  }

  /** Writes (0: deletes) keys of this instance. A number is read when its write is issued, and one connection's
   * writes reach the stream in the order sent: the last write of a key leaves its latest number. */
  private async write<T> (items: readonly T[], key: (item: T) => string, number: (item: T) => number): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < items.length) {
        const item = items[next++]
        const n = number(item)
        // delete, not purge: a purge (a rollup) would make nats-server 2.9 skip entries in every watch
        if (n > 0) await this.kv.put(key(item), encoder.encode(String(n)))
        else await this.kv.delete(key(item))
      }
    }
    const batch = Promise.all(Array.from({ length: Math.min(WRITE_CONCURRENCY, items.length) }, worker))
    this.writing.add(batch)
    try {
      await batch
    } finally {
      this.writing.delete(batch)
    }
  }

  protected async writeChannels (channels: readonly string[]): Promise<void> {
    await this.write(channels, this.watchKey, (channel) => this.countOf(channel))
  }

  protected async writeTypes (types: readonly string[]): Promise<void> {
    await this.write(types, this.typeKey, (type) => this.typeCounts.get(type) ?? 0)
  }

  async isWatched (channel: string): Promise<boolean> {
    if (this.countOf(channel) > 0) return true
    const view = await this.caughtUp()
    // unsure when the watch lags: a read too many costs less than a change lost
    if (view === null) return true
    return this.countOf(channel) > 0 || view.othersIn(view.watching, keyPart(channel), this.instanceId) > 0
  }

  /** From memory: counts shown to people may trail the store by the watch's delay. */
  async watchers (channel: string): Promise<number> {
    return this.countOf(channel) + (this.view?.othersIn(this.view.watching, keyPart(channel), this.instanceId) ?? 0)
  }

  async totals (): Promise<Record<string, number>> {
    const totals: Record<string, number> = {}
    const view = this.view
    const parts = new Set([...view?.typed.keys() ?? [], ...[...this.typeCounts.keys()].map(keyPart)])
    for (const part of parts) {
      const type = Buffer.from(part, 'base64url').toString()
      const sum = (this.typeCounts.get(type) ?? 0) + (view?.othersIn(view.typed, part, this.instanceId) ?? 0)
      if (sum > 0) totals[type] = sum
    }
    return totals
  }

  /** From memory: an instance is alive while the expiry its last heartbeat wrote is ahead. */
  async liveInstances (): Promise<Set<string>> {
    const now = Date.now()
    const live = new Set([this.instanceId])
    for (const [id, expiresAt] of this.view?.expiries ?? []) if (expiresAt >= now) live.add(id)
    return live
  }

  protected async heartbeat (): Promise<void> {
    const now = Date.now()
    const mine = await this.kv.get('i.' + this.instanceId)
    await this.kv.put('i.' + this.instanceId, encoder.encode(JSON.stringify({ expiresAt: now + this.ttlMs })))
    // gone while we were registered: the server lost its state (or declared us dead); write everything again
    if (this.registered && (mine === null || mine.operation !== 'PUT')) await this.rewrite()
    this.registered = true
    const view = this.view
    if (view === null) return
    for (const id of new Set([...view.expiries.keys(), ...view.held.keys()])) {
      if (id === this.instanceId || (view.expiries.get(id) ?? 0) >= now) continue
      // the watch may trail: the store decides
      const entry = await this.kv.get('i.' + id)
      const expiresAt = entry !== null && entry.operation === 'PUT' ? entry.json<{ expiresAt: number }>().expiresAt : 0
      if (expiresAt < now) await this.remove(id)
    }
    // every removed key leaves a marker behind; without this the bucket grows with every (un)subscribe ever made
    if (++this.beats % PURGE_EVERY_BEATS === 0) {
      const old = [...view.markers].filter(([, at]) => at < now - PURGE_MARKERS_AFTER_MS).map(([key]) => key)
      if (old.length === 0) return
      await this.purge(old)
      this.purged()
    }
  }

  /** Drops every message of these keys (the markers of removed keys); then tell the other instances (purged). */
  private async purge (keys: readonly string[]): Promise<void> {
    await Promise.all(keys.map(async (key) => await this.jsm.streams.purge(this.stream, { filter: `$KV.${this.stream.slice(3)}.${key}`, keep: 0 })))
  }

  private purged (): void {
    this.nc.publish(`_changefeed.${this.stream.slice(3)}.purged`)
  }

  /** Removes an instance's keys; returns them (each has left a marker). */
  private async remove (id: string): Promise<string[]> {
    const owned: string[] = []
    for (const filter of [`w.*.${id}`, `t.*.${id}`]) for await (const key of await this.kv.keys(filter)) owned.push(key)
    await Promise.all(owned.map(async (key) => await this.kv.delete(key)))
    // last: while its keys remain, its heartbeat entry makes it a candidate for removal again
    await this.kv.delete('i.' + id)
    this.log.info({ instance: id, entries: owned.length }, 'changefeed: removed the interest of an instance that stopped')
    return [...owned, 'i.' + id]
  }

  /** Removes this instance's entries; bounded, because with the server away they would wait for it (the others
   * expire them after the TTL anyway). */
  async close (): Promise<void> {
    const stopped = this.stopTimers()
    this.closed = true
    this.view?.stop()
    this.purgedSubscription?.unsubscribe()
    if (this.nc.isClosed()) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.allSettled([stopped, ...this.writing])
        // its own markers by key (purgeDeletes keeps those written in its own millisecond), then any older one
        .then(async () => await this.remove(this.instanceId))
        .then(async (removed) => await this.purge(removed))
        .then(async () => await this.kv.purgeDeletes(0))
        .then(() => this.purged())
        .catch(() => {}),
      new Promise((resolve) => { timer = setTimeout(resolve, CLOSE_CLEANUP_MS) })
    ])
    clearTimeout(timer)
  }
}
