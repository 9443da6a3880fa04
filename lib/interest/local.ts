/**
 * This instance's subscriptions: which local sockets watch an entity. The hot path of delivery: one Map lookup
 * per message, then a walk over a Set; nothing allocated per subscriber.
 */

export interface WatchedEntity<R> {
  entityType: string
  entityId: string
  /** the tenant of a tenant's channel; null for a channel of every tenant, or of an untenanted type */
  tenantId: string | null
  receivers: Set<R>
}

export class LocalSubscriptionStore<R> {
  private readonly entries = new Map<string, WatchedEntity<R>>()
  private count = 0

  /** Returns true when `receiver` is the first local receiver of the channel. */
  add (channel: string, entityType: string, entityId: string, tenantId: string | null, receiver: R): boolean {
    let entry = this.entries.get(channel)
    const first = entry === undefined
    if (entry === undefined) {
      entry = { entityType, entityId, tenantId, receivers: new Set() }
      this.entries.set(channel, entry)
    }
    if (!entry.receivers.has(receiver)) {
      entry.receivers.add(receiver)
      this.count++
    }
    return first
  }

  /** Returns true when the last local receiver of the channel left. */
  remove (channel: string, receiver: R): boolean {
    const entry = this.entries.get(channel)
    if (entry === undefined || !entry.receivers.delete(receiver)) return false
    this.count--
    if (entry.receivers.size > 0) return false
    this.entries.delete(channel)
    return true
  }

  get (channel: string): WatchedEntity<R> | undefined {
    return this.entries.get(channel)
  }

  has (channel: string): boolean {
    return this.entries.has(channel)
  }

  /** Number of (socket, entity) pairs. */
  get subscriptions (): number {
    return this.count
  }

  /** Number of distinct entities watched here. */
  get entities (): number {
    return this.entries.size
  }

  values (): IterableIterator<WatchedEntity<R>> {
    return this.entries.values()
  }

  /** [channel, entry] pairs */
  channels (): IterableIterator<[string, WatchedEntity<R>]> {
    return this.entries.entries()
  }

  /** The `n` entities with the most local watchers. */
  busiest (n: number): Array<{ channel: string, entityType: string, entityId: string, tenantId: string | null, watchers: number }> {
    return [...this.entries.entries()]
      .sort(([, a], [, b]) => b.receivers.size - a.receivers.size)
      .slice(0, n)
      .map(([channel, e]) => ({ channel, entityType: e.entityType, entityId: e.entityId, tenantId: e.tenantId, watchers: e.receivers.size }))
  }

  /** Subscriptions per entity type. */
  countByType (): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const e of this.entries.values()) counts[e.entityType] = (counts[e.entityType] ?? 0) + e.receivers.size
    return counts
  }
}
