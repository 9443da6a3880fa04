/**
 * Presence entries in Redis, beside the cluster interest store (lib/interest/redis.ts) on the publishing connection:
 *   {<prefix>}:presence:<channel>   HASH  "<instance> <userId>" → that instance's entry for the user (JSON)
 * Every instance with members on an entity renews the hash's expiry with its heartbeat, so the hash of an entity
 * whose instances all stopped goes by itself; the fields of one instance that stopped are removed by an instance
 * that notices (lib/presence/presence.ts).
 */
import type { RedisClient } from '../bus/redis.js'
import type { Entry } from './room.js'
import type { PresenceStore, StoredEntry } from './store.js'

export class RedisPresenceStore implements PresenceStore {
  private readonly base: string

  constructor (
    private readonly redis: RedisClient,
    prefix: string,
    private readonly instanceId: string,
    private readonly ttlMs: number,
    readonly live: () => Promise<Set<string>>
  ) {
    // the interest store's hash tag: one slot, as its keys (Redis Cluster)
    this.base = `{${prefix}}:presence:`
  }

  async write (channel: string, userId: string, entry: Entry | null): Promise<void> {
    const key = this.base + channel
    const field = this.instanceId + ' ' + userId
    if (entry === null) await this.redis.hdel(key, field)
    else await this.redis.multi().hset(key, field, JSON.stringify(entry)).pexpire(key, this.ttlMs).exec()
  }

  async load (channel: string): Promise<StoredEntry[]> {
    const entries: StoredEntry[] = []
    for (const [field, value] of Object.entries(await this.redis.hgetall(this.base + channel))) {
      const space = field.indexOf(' ')
      if (space === -1) continue
      entries.push({ instance: field.slice(0, space), userId: field.slice(space + 1), entry: JSON.parse(value) as Entry })
    }
    return entries
  }

  async forget (channel: string, instance: string, userIds: readonly string[]): Promise<void> {
    if (userIds.length > 0) await this.redis.hdel(this.base + channel, ...userIds.map((userId) => instance + ' ' + userId))
  }

  async refresh (channels: readonly string[]): Promise<void> {
    const tx = this.redis.pipeline()
    for (const channel of channels) tx.pexpire(this.base + channel, this.ttlMs)
    await tx.exec()
  }
}
