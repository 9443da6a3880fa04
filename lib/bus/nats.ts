/**
 * NATS: core pub/sub for the channels, and the cluster interest store in a JetStream key-value bucket
 * (`<prefix>_interest`), so a deployment needs no Redis. Channel names become subjects with the characters NATS
 * reserves ('.', '*', '>', whitespace) escaped; KV keys use base64url.
 *   w.<channel>    { instanceId: watchers }        t.<Type>  { instanceId: subscriptions }
 *   i.<instanceId> { expiresAt }                   o.<instanceId>.<key>  the keys an instance wrote (for cleanup)
 * Map updates are compare-and-set on the entry's revision, so instances never overwrite each other.
 */
import type { FastifyBaseLogger } from 'fastify'
import { connect, type KV, type NatsConnection, type Subscription } from 'nats'
import { CONNECT_TIMEOUT_MS, type BusContext, type PubSub } from './types.js'
import type { LocalSnapshot } from '../store/interest.js'
import { ClusterInterest } from '../store/cluster.js'
import { BusUnavailableError } from '../errors.js'
import { redactCredentials } from '../auth/redact.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** A channel as a NATS subject: one token, nothing NATS would read as a separator or wildcard. */
export function subjectOf (channel: string): string {
  return channel.replace(/[%.*>\s]/g, (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0'))
}
const keyPart = (s: string): string => Buffer.from(s).toString('base64url')

/** Connects, or throws CHANGEFEED_BUS_UNAVAILABLE within `timeoutMs` when no server answers. */
export async function connectNats (url: string, log: FastifyBaseLogger, timeoutMs = CONNECT_TIMEOUT_MS): Promise<NatsConnection> {
  let nc: NatsConnection
  try {
    nc = await connect({ servers: url, name: 'fastify-changefeed', reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 250, timeout: timeoutMs })
  } catch (err) {
    // nats.js errors say only their code (CONNECTION_REFUSED, TIMEOUT): the URL is what the operator needs
    throw new BusUnavailableError('NATS', redactCredentials(url), (err as Error).message)
  }
  log.info({ server: nc.getServer() }, 'changefeed: connected to NATS')
  return nc
}

export class NatsBus implements PubSub {
  readonly provider = 'nats'
  private readonly subscriptions = new Map<string, Subscription>()
  private connected = true
  private closed = false

  constructor (private readonly nc: NatsConnection, private readonly context: BusContext, private readonly log: FastifyBaseLogger) {
    void this.watchStatus()
  }

  private async watchStatus (): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === 'disconnect') {
        this.connected = false
        this.log.warn('changefeed: NATS connection lost')
      } else if (status.type === 'reconnect') {
        // subscriptions are restored by the client; what was published meanwhile is lost: say so
        this.connected = true
        this.log.info('changefeed: NATS connection restored')
        this.context.onGap('bus_gap')
      }
    }
  }

  get ready (): boolean {
    return !this.closed && this.connected && !this.nc.isClosed()
  }

  async publish (channel: string, message: string): Promise<void> {
    this.nc.publish(subjectOf(channel), encoder.encode(message))
  }

  async subscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) {
      if (this.subscriptions.has(channel)) continue
      this.subscriptions.set(channel, this.nc.subscribe(subjectOf(channel), {
        callback: (err, msg) => { if (err === null && !this.closed) this.context.onMessage(channel, decoder.decode(msg.data)) }
      }))
    }
    // SUB is sent asynchronously; the round trip makes "subscribed" mean the server delivers from now on
    await this.nc.flush()
  }

  async unsubscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) {
      this.subscriptions.get(channel)?.unsubscribe()
      this.subscriptions.delete(channel)
    }
  }

  async close (): Promise<void> {
    this.closed = true
    for (const s of this.subscriptions.values()) s.unsubscribe()
    this.subscriptions.clear()
  }
}

type CountMap = Record<string, number>
/** The bucket nats.js returns: its KV interface leaves out purgeDeletes, which the implementation has. */
type Bucket = KV & { purgeDeletes(olderMillis?: number): Promise<unknown> }

const CLOSE_CLEANUP_MS = 2000
/** interest keys written at once (each is a compare-and-set of its own) */
const WRITE_CONCURRENCY = 32
/** markers of removed keys are dropped every this many heartbeats, once they are this old */
const PURGE_EVERY_BEATS = 10
const PURGE_MARKERS_AFTER_MS = 5000

export class NatsInterest extends ClusterInterest {
  private kv!: Bucket
  private registered = false
  private beats = 0
  /** the types whose key this instance's index holds (a type's index entry stays while the instance lives) */
  private readonly indexedTypes = new Set<string>()

  constructor (private readonly nc: NatsConnection, private readonly prefix: string, instanceId: string, ttlMs: number, snapshot: LocalSnapshot, log: FastifyBaseLogger) {
    super(instanceId, ttlMs, snapshot, log)
  }

  /** Opens the bucket (enough to answer questions); start() also registers this instance. */
  async open (): Promise<void> {
    this.kv = await this.nc.jetstream().views.kv(`${this.prefix.replace(/[^A-Za-z0-9_-]/g, '_')}_interest`, { history: 1 }) as Bucket
  }

  async start (): Promise<void> {
    await this.open()
    await this.heartbeat()
    this.startTimers()
  }

  private readonly watchKey = (channel: string): string => 'w.' + keyPart(channel)
  private readonly typeKey = (type: string): string => 't.' + keyPart(type)
  private readonly ownKey = (id: string, key: string): string => `o.${id}.${key}`

  private async read (key: string): Promise<{ map: CountMap, revision: number }> {
    const entry = await this.kv.get(key)
    if (entry === null || entry.operation !== 'PUT' || entry.value.length === 0) return { map: {}, revision: entry?.revision ?? 0 }
    return { map: JSON.parse(decoder.decode(entry.value)) as CountMap, revision: entry.revision }
  }

  /**
   * Sets (or with 0 removes) one instance's number in a shared map, compare-and-set on the revision. The number is
   * taken after the read, so a write that lost the race to a newer one of this instance writes the newer number.
   */
  private async setCount (key: string, id: string, count: () => number): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const { map, revision } = await this.read(key)
      const n = count()
      if (n > 0) map[id] = n
      else delete map[id]
      const data = encoder.encode(JSON.stringify(map))
      try {
        if (Object.keys(map).length === 0) {
          // purge, not delete: one marker per key, and purgeDeletes() can drop it
          if (revision !== 0) await this.kv.purge(key, { previousSeq: revision })
        } else if (revision === 0) {
          await this.kv.create(key, data)
        } else {
          await this.kv.update(key, data, revision)
        }
        return
      } catch (err) {
        // another instance wrote first: read again
        if (attempt === 19) throw err
      }
    }
  }

  /** Runs `task` for every item, at most WRITE_CONCURRENCY at a time. */
  private async each<T> (items: readonly T[], task: (item: T) => Promise<void>): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < items.length) await task(items[next++])
    }
    await Promise.all(Array.from({ length: Math.min(WRITE_CONCURRENCY, items.length) }, worker))
  }

  protected async writeChannels (channels: readonly string[], crossed: boolean): Promise<void> {
    await this.each(channels, async (channel) => {
      const key = this.watchKey(channel)
      await this.setCount(key, this.instanceId, () => this.countOf(channel))
      // the index of this instance's keys changes only when it starts or stops holding one
      if (!crossed) return
      if (this.countOf(channel) > 0) await this.kv.put(this.ownKey(this.instanceId, key), encoder.encode('1'))
      else await this.kv.purge(this.ownKey(this.instanceId, key))
    })
  }

  protected async writeTypes (types: readonly string[]): Promise<void> {
    await this.each(types, async (type) => {
      const n = (): number => this.typeCounts.get(type) ?? 0
      await this.setCount(this.typeKey(type), this.instanceId, n)
      if (n() > 0 && !this.indexedTypes.has(type)) {
        await this.kv.put(this.ownKey(this.instanceId, this.typeKey(type)), encoder.encode('1'))
        this.indexedTypes.add(type)
      }
    })
  }

  async isWatched (channel: string): Promise<boolean> {
    return Object.keys((await this.read(this.watchKey(channel))).map).length > 0
  }

  async watchers (channel: string): Promise<number> {
    return Object.values((await this.read(this.watchKey(channel))).map).reduce((a, b) => a + b, 0)
  }

  async totals (): Promise<Record<string, number>> {
    const totals: Record<string, number> = {}
    for await (const key of await this.kv.keys('t.*')) {
      const sum = Object.values((await this.read(key)).map).reduce((a, b) => a + b, 0)
      if (sum > 0) totals[Buffer.from(key.slice(2), 'base64url').toString()] = sum
    }
    return totals
  }

  protected async heartbeat (): Promise<void> {
    const now = Date.now()
    const mine = await this.kv.get('i.' + this.instanceId)
    await this.kv.put('i.' + this.instanceId, encoder.encode(JSON.stringify({ expiresAt: now + this.ttlMs })))
    // gone while we were registered: the server lost its state (or declared us dead); write everything again
    if (this.registered && (mine === null || mine.operation !== 'PUT')) {
      this.indexedTypes.clear()
      await this.rewrite()
    }
    this.registered = true
    for await (const key of await this.kv.keys('i.*')) {
      const id = key.slice(2)
      if (id === this.instanceId) continue
      const entry = await this.kv.get(key)
      const expiresAt = entry !== null && entry.operation === 'PUT' ? (JSON.parse(decoder.decode(entry.value)) as { expiresAt: number }).expiresAt : 0
      if (expiresAt < now) await this.remove(id)
    }
    // every removed key leaves a marker behind; without this the bucket grows with every (un)subscribe ever made
    if (++this.beats % PURGE_EVERY_BEATS === 0) await this.kv.purgeDeletes(PURGE_MARKERS_AFTER_MS)
  }

  private async remove (id: string): Promise<void> {
    // list first, then clean: another instance may be removing the same one, and purging while listing would hide
    // keys from its listing; every key either instance listed is cleaned before its marker is purged
    const owned: string[] = []
    for await (const own of await this.kv.keys(`o.${id}.>`)) owned.push(own)
    await this.each(owned, async (own) => {
      await this.setCount(own.slice(`o.${id}.`.length), id, () => 0)
      await this.kv.purge(own)
    })
    await this.kv.purge('i.' + id)
    this.log.info({ instance: id, entries: owned.length }, 'changefeed: removed the interest of an instance that stopped')
  }

  /** Removes this instance's entries; bounded, because with the server away they would wait for it (the others
   * expire them after the TTL anyway). */
  async close (): Promise<void> {
    this.stopTimers()
    if (this.nc.isClosed()) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      this.remove(this.instanceId).then(async () => await this.kv.purgeDeletes(0)).catch(() => {}),
      new Promise((resolve) => { timer = setTimeout(resolve, CLOSE_CLEANUP_MS) })
    ])
    clearTimeout(timer)
  }
}
