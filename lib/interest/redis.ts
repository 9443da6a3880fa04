/**
 * The cluster interest store in Redis keys, beside the Redis bus (lib/bus/redis.ts) on its publishing connection:
 *   {<prefix>}:cluster:instances            ZSET  instance id → heartbeat expiry (ms)
 *   {<prefix>}:cluster:watch:<channel>      HASH  instance id → that instance's watchers of the channel
 *   {<prefix>}:cluster:type:<Type>          HASH  instance id → that instance's subscriptions of the type
 *   {<prefix>}:cluster:types                SET   type names counted (each instance renews it with its own; it
 *                                                 expires when none does, and goes with the last one to stop)
 *   {<prefix>}:cluster:of:<id>              SET   the watch/type keys an instance wrote (for cleanup)
 * An instance whose heartbeat lapses is removed by whichever instance notices first. The keys share one hash tag, so
 * on a Redis Cluster one transaction can write many of them.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { RedisClient } from '../bus/redis.js'
import type { LocalSnapshot } from './interest.js'
import { ClusterInterest } from './cluster.js'

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

  async liveInstances (): Promise<Set<string>> {
    return new Set([this.instanceId, ...await this.redis.zrangebyscore(this.k.instances, Date.now(), '+inf')])
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
    await this.stopTimers()
    this.redis.off('ready', this.onReady)
    // leave cleanly, so the others need not wait for the TTL
    if (this.redis.status === 'ready') await this.remove(this.instanceId).catch(() => {})
  }
}
