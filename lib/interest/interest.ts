/**
 * Interest: whether anyone watches an entity, how many, and totals per type. Locally (memory bus) that is this
 * instance's subscription store; in a cluster it lives in the bus's own store (Redis keys, NATS KV), one entry per
 * instance, which a crashed instance's heartbeat stops renewing.
 */
import type { LocalSubscriptionStore } from './local.js'

/** This instance's number of watchers of a channel is now `count`. */
export interface InterestUpdate { channel: string, entityType: string, count: number }

export interface InterestStore {
  /** true when answers come from memory, without a round trip */
  readonly local: boolean
  /**
   * Records this instance's watcher counts. A first watcher (0 → n) and a last one (n → 0) are written before the
   * promise resolves, so that the publisher sees a subscription before it is confirmed to the client; counts in
   * between may be written in batches. Many updates go in one round trip where the store allows.
   */
  update(updates: readonly InterestUpdate[]): Promise<void>
  isWatched(channel: string): boolean | Promise<boolean>
  /** watchers of a channel across the cluster */
  watchers(channel: string): Promise<number>
  /** subscriptions per entity type across the cluster */
  totals(): Promise<Record<string, number>>
  close(): Promise<void>
}

/**
 * One process: the local store answers everything. A channel whose last watcher left a moment ago stays watched for
 * its type's `lingerMs` (those whose type keeps a history): its changes still reach the history, so a lone watcher
 * back from a short drop resumes from it rather than refetching.
 */
export class LocalInterest implements InterestStore {
  readonly local = true
  /** channels whose last watcher left lately, and until when they count as watched (epoch ms), in the order they left */
  private readonly left = new Map<string, number>()

  constructor (private readonly store: LocalSubscriptionStore<unknown>, private readonly lingerMs: (entityType: string) => number = () => 0, private readonly now: () => number = Date.now) {}

  async update (updates: readonly InterestUpdate[]): Promise<void> {
    const now = this.now()
    for (const { channel, entityType, count } of updates) {
      this.left.delete(channel)
      const ms = count === 0 ? this.lingerMs(entityType) : 0
      if (ms > 0) this.left.set(channel, now + ms)
    }
    // those whose time is up, oldest first (a type's linger is its history's: near enough in order)
    for (const [channel, until] of this.left) {
      if (until > now) break
      this.left.delete(channel)
    }
  }

  isWatched (channel: string): boolean {
    return this.store.has(channel) || (this.left.get(channel) ?? 0) > this.now()
  }

  /** channels no one watches that still count as watched (tests, leak checks) */
  get lingering (): number {
    return this.left.size
  }

  async watchers (channel: string): Promise<number> {
    return this.store.get(channel)?.receivers.size ?? 0
  }

  async totals (): Promise<Record<string, number>> {
    return this.store.countByType()
  }

  async close (): Promise<void> {}
}

/** What a cluster store rewrites after its broker lost its state (a restart without persistence). */
export type LocalSnapshot = () => Iterable<{ channel: string, entityType: string, count: number }>
