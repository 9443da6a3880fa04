/**
 * Redis: pub/sub on two connections (ioredis through @fastify/redis, and a second one in subscriber mode), and the
 * cluster interest store in Redis keys:
 *   {<prefix>}:cluster:instances            ZSET  instance id → heartbeat expiry (ms)
 *   {<prefix>}:cluster:watch:<channel>      HASH  instance id → that instance's watchers of the channel
 *   {<prefix>}:cluster:type:<Type>          HASH  instance id → that instance's subscriptions of the type
 *   {<prefix>}:cluster:types                SET   type names counted (each instance renews it with its own; it
 *                                                 expires when none does, and goes with the last one to stop)
 *   {<prefix>}:cluster:of:<id>              SET   the watch/type keys an instance wrote (for cleanup)
 * An instance whose heartbeat lapses is removed by whichever instance notices first.
 *
 * Redis Cluster (`bus.cluster`): entity channels use sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7), so each change
 * goes to the one shard that owns its channel instead of every node; the interest keys share one hash tag, so one
 * transaction can write many of them.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import calculateSlot from 'cluster-key-slot'
import type { BusContext, PubSub } from './types.js'
import type { LocalSnapshot } from '../store/interest.js'
import { ClusterInterest } from '../store/cluster.js'

export type RedisClient = Redis | Cluster

/** Channels grouped by hash slot: a sharded (un)subscribe names channels of one slot only. */
function bySlot (channels: readonly string[]): string[][] {
  const groups = new Map<number, string[]>()
  for (const channel of channels) {
    const slot = calculateSlot(channel)
    const group = groups.get(slot)
    if (group === undefined) groups.set(slot, [channel])
    else group.push(channel)
  }
  return [...groups.values()]
}

export class RedisBus implements PubSub {
  readonly provider = 'redis'
  /** the connections that dropped and are not back yet: each comes back on its own */
  private readonly down = new Set<RedisClient>()
  private closed = false

  /**
   * `publisher` may be a host's client (not closed here); `subscriber` is this bus's own. `sharded`: both are
   * Redis Cluster clients, the subscriber with sharded subscribers.
   */
  constructor (private readonly publisher: RedisClient, private readonly subscriber: RedisClient, private readonly context: BusContext, private readonly log: FastifyBaseLogger, private readonly sharded = false) {
    // the subscriber disconnects asynchronously: a message can arrive after close(), drop it
    subscriber.on(sharded ? 'smessage' : 'message', (channel: string, message: string) => { if (!this.closed) context.onMessage(channel, message) })
    for (const client of [publisher, subscriber]) {
      client.on('close', () => this.lost(client))
      client.on('ready', () => this.back(client))
      client.on('error', (err: Error) => log.debug({ err: err.message }, 'changefeed: Redis error'))
    }
    if (sharded) {
      // A shard's subscriber that ends loses that shard's messages until the group has subscribed it again. The
      // group says 'subscribersReady' after each attempt, a failed one too (its 'error' comes first): every such
      // attempt after a loss or a failure is reported, so the last report follows the real recovery.
      let disturbed = false
      const disturb = (): void => { disturbed = true; this.lost(subscriber) }
      for (const event of ['-subscriber', '-node', 'error']) subscriber.on(event, disturb)
      subscriber.on('subscribersReady', () => {
        if (!disturbed || this.closed) return
        disturbed = false
        this.down.delete(subscriber)
        this.log.info('changefeed: Redis Cluster subscribers ready')
        this.context.onGap('bus_gap')
      })
    }
  }

  private lost (client: RedisClient): void {
    if (this.closed || this.down.has(client)) return
    if (this.down.size === 0) this.log.warn('changefeed: Redis connection lost')
    this.down.add(client)
  }

  private back (client: RedisClient): void {
    if (this.closed || !this.down.delete(client)) return
    if (this.down.size === 0) this.log.info('changefeed: Redis connection restored')
    // ioredis resubscribes by itself (autoResubscribe); what was published meanwhile did not reach this instance:
    // say so. 'ready' comes before ioredis sends its SUBSCRIBE again, so the resync reaches the sockets before
    // anything published after the outage: delivered first, a later change would move a client's position past the
    // lost ones, and its resume would skip them. (What this instance failed to publish meanwhile is owed by the
    // router to the entities concerned.)
    if (client === this.subscriber) this.context.onGap('bus_gap')
  }

  get ready (): boolean {
    return !this.closed && this.publisher.status === 'ready' && this.subscriber.status === 'ready'
  }

  async publish (channel: string, message: string): Promise<void> {
    if (this.sharded) await this.publisher.spublish(channel, message)
    else await this.publisher.publish(channel, message)
  }

  async subscribe (channels: readonly string[]): Promise<void> {
    if (channels.length === 0) return
    if (this.sharded) await Promise.all(bySlot(channels).map(async (group) => await this.subscriber.ssubscribe(...group)))
    else await this.subscriber.subscribe(...channels)
  }

  async unsubscribe (channels: readonly string[]): Promise<void> {
    if (channels.length === 0) return
    if (this.sharded) await Promise.all(bySlot(channels).map(async (group) => await this.subscriber.sunsubscribe(...group)))
    else await this.subscriber.unsubscribe(...channels)
  }

  async close (): Promise<void> {
    this.closed = true
    this.subscriber.disconnect()
  }
}

export class RedisInterest extends ClusterInterest {
  private readonly k: { instances: string, types: string, of: (id: string) => string, watch: (c: string) => string, type: (t: string) => string }

  constructor (private readonly redis: RedisClient, prefix: string, instanceId: string, ttlMs: number, snapshot: LocalSnapshot, log: FastifyBaseLogger) {
    super(instanceId, ttlMs, snapshot, log)
    // one hash tag: every key in one slot, so a transaction may write any of them (Redis Cluster)
    const base = `{${prefix}}:cluster:`
    this.k = {
      instances: base + 'instances',
      types: base + 'types',
      of: (id) => base + 'of:' + id,
      watch: (channel) => base + 'watch:' + channel,
      type: (type) => base + 'type:' + type
    }
  }

  async start (): Promise<void> {
    await this.heartbeat()
    this.startTimers()
    this.redis.on('ready', this.onReady)
  }

  private readonly onReady = (): void => {
    this.heartbeat().catch(() => {})
  }

  protected async writeChannels (channels: readonly string[], crossed: boolean): Promise<void> {
    const tx = this.redis.multi()
    for (const channel of channels) {
      const key = this.k.watch(channel)
      const count = this.countOf(channel)
      if (count > 0) tx.hset(key, this.instanceId, count)
      else tx.hdel(key, this.instanceId)
      // the index of this instance's keys changes only when it starts or stops holding one
      if (crossed) tx[count > 0 ? 'sadd' : 'srem'](this.k.of(this.instanceId), key)
    }
    await tx.exec()
  }

  protected async writeTypes (types: readonly string[]): Promise<void> {
    const tx = this.redis.multi()
    for (const type of types) {
      const n = this.typeCounts.get(type) ?? 0
      if (n > 0) tx.hset(this.k.type(type), this.instanceId, n).sadd(this.k.types, type).sadd(this.k.of(this.instanceId), this.k.type(type))
      else tx.hdel(this.k.type(type), this.instanceId)
    }
    await tx.pexpire(this.k.types, this.ttlMs).exec()
  }

  async isWatched (channel: string): Promise<boolean> {
    return await this.redis.exists(this.k.watch(channel)) === 1
  }

  async watchers (channel: string): Promise<number> {
    return (await this.redis.hvals(this.k.watch(channel))).reduce((sum, v) => sum + Number(v), 0)
  }

  async totals (): Promise<Record<string, number>> {
    const totals: Record<string, number> = {}
    for (const type of await this.redis.smembers(this.k.types)) {
      const sum = (await this.redis.hvals(this.k.type(type))).reduce((s, v) => s + Number(v), 0)
      if (sum > 0) totals[type] = sum
    }
    return totals
  }

  protected async heartbeat (): Promise<void> {
    const now = Date.now()
    // 1 when this instance was not registered: at start, or after the broker lost its state
    const added = await this.redis.zadd(this.k.instances, now + this.ttlMs, this.instanceId)
    if (added === 1) await this.rewrite()
    // the list of types outlives no instance: each renews it, with the types it counts
    const types: string[] = []
    for (const [type, n] of this.typeCounts) if (n > 0) types.push(type)
    const tx = this.redis.multi()
    if (types.length > 0) tx.sadd(this.k.types, ...types)
    await tx.pexpire(this.k.types, this.ttlMs).exec()
    const dead = await this.redis.zrangebyscore(this.k.instances, '-inf', now)
    for (const id of dead) if (id !== this.instanceId) await this.remove(id)
  }

  private async remove (id: string): Promise<void> {
    const keys = await this.redis.smembers(this.k.of(id))
    const tx = this.redis.multi()
    for (const key of keys) tx.hdel(key, id)
    tx.del(this.k.of(id)).zrem(this.k.instances, id)
    await tx.exec()
    // the last instance gone: nothing is counted any more
    if (await this.redis.zcard(this.k.instances) === 0) await this.redis.del(this.k.types)
    this.log.info({ instance: id, entries: keys.length }, 'changefeed: removed the interest of an instance that stopped')
  }

  async close (): Promise<void> {
    this.stopTimers()
    this.redis.off('ready', this.onReady)
    // leave cleanly, so the others need not wait for the TTL
    if (this.redis.status === 'ready') await this.remove(this.instanceId).catch(() => {})
  }
}
