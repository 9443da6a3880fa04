/**
 * This instance's subscriptions: which local sockets watch an entity. The hot path of delivery: one Map lookup
 * per message, then a walk over a Set; nothing allocated per subscriber.
 */

export interface WatchedEntity<W> {
  entityType: string
  entityId: string
  /** the tenant of a tenant's channel; null for a channel of every tenant, or of an untenanted type */
  tenantId: string | null
  watchers: Set<W>
}

export class LocalSubscriptionStore<W> {
  private readonly entries = new Map<string, WatchedEntity<W>>()
  private count = 0

  /** Returns true when `watcher` is the first local watcher of the channel. */
  add (channel: string, entityType: string, entityId: string, tenantId: string | null, watcher: W): boolean {
    let entry = this.entries.get(channel)
    const first = entry === undefined
    if (entry === undefined) {
      entry = { entityType, entityId, tenantId, watchers: new Set() }
      this.entries.set(channel, entry)
    }
    if (!entry.watchers.has(watcher)) {
      entry.watchers.add(watcher)
      this.count++
    }
    return first
  }

  /** Returns true when the last local watcher of the channel left. */
  remove (channel: string, watcher: W): boolean {
    const entry = this.entries.get(channel)
    if (entry === undefined || !entry.watchers.delete(watcher)) return false
    this.count--
    if (entry.watchers.size > 0) return false
    this.entries.delete(channel)
    return true
  }

  get (channel: string): WatchedEntity<W> | undefined {
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

  values (): IterableIterator<WatchedEntity<W>> {
    return this.entries.values()
  }

  /** [channel, entry] pairs */
  channels (): IterableIterator<[string, WatchedEntity<W>]> {
    return this.entries.entries()
  }

  /** The `n` entities with the most local watchers. */
  busiest (n: number): Array<{ channel: string, entityType: string, entityId: string, tenantId: string | null, watchers: number }> {
    return [...this.entries.entries()]
      .sort(([, a], [, b]) => b.watchers.size - a.watchers.size)
      .slice(0, n)
      .map(([channel, e]) => ({ channel, entityType: e.entityType, entityId: e.entityId, tenantId: e.tenantId, watchers: e.watchers.size }))
  }

  /** Subscriptions per entity type. */
  countByType (): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const e of this.entries.values()) counts[e.entityType] = (counts[e.entityType] ?? 0) + e.watchers.size
    return counts
  }
}
