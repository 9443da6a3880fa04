/**
 * Redis pub/sub on two connections (ioredis through @fastify/redis, and a second one in subscriber mode); the
 * cluster interest store is lib/interest/redis.ts. Redis Cluster (`bus.cluster`): entity channels use sharded
 * pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7), so each change goes to the one shard that owns its channel instead of
 * every node.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import calculateSlot from 'cluster-key-slot'
import { Transport, type PubSub } from './bus.js'
import { RedisHistory } from './history-redis.js'

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

export class RedisBus extends Transport implements PubSub {
  readonly provider = 'redis'
  /** the connections that dropped and are not back yet: each comes back on its own */
  private readonly down = new Set<RedisClient>()
  private closed = false
  private readonly sharded: boolean
  readonly history: RedisHistory

  /**
   * `publisher` may be a host's client (not closed here); `subscriber` is this bus's own. `sharded`: both are
   * Redis Cluster clients, the subscriber with sharded subscribers.
   */
  constructor (private readonly publisher: RedisClient, private readonly subscriber: RedisClient, private readonly log: FastifyBaseLogger, { sharded = false, prefix = 'changefeed' }: { sharded?: boolean, prefix?: string } = {}) {
    super()
    this.sharded = sharded
    this.history = new RedisHistory(publisher, prefix, sharded, async (channel, message) => await this.publish(channel, message))
    // the subscriber disconnects asynchronously: a message can arrive after close(), drop it
    subscriber.on(sharded ? 'smessage' : 'message', (channel: string, message: string) => { if (!this.closed) this.deliver(channel, message) })
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
        this.gap('bus_gap')
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
    if (client === this.subscriber) this.gap('bus_gap')
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
