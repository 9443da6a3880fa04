/**
 * Which channels this instance receives from the bus, and what it tells the cluster it watches: exactly the
 * channels its local sockets watch, with their counts.
 *
 * Subscribing and unsubscribing take a round trip, and a receiver can arrive while the last one's unsubscribe is on
 * its way; following each event in turn, a late unsubscribe would cancel the new receiver's subscribe and the entity
 * would go silent here. So nothing follows the events: one loop at a time compares what the local store holds with
 * what the bus has and closes the difference, for every channel that changed since its last round. Changes that
 * arrive meanwhile wait for the next round, which takes them all at once: a reconnect storm of thousands of
 * subscriptions costs a few round trips, not one each.
 */
import type { PubSub } from '../bus/bus.js'
import type { InterestStore, InterestUpdate } from '../interest/interest.js'

interface Waiter { resolve: () => void, reject: (err: Error) => void }
interface Pending { entityType: string, waiters: Waiter[] }

export class BusMembership {
  /** channels subscribed on the bus (as far as the last round knows) */
  private readonly subscribed = new Set<string>()
  private pending = new Map<string, Pending>()
  private running = false

  constructor (
    private readonly bus: PubSub,
    private readonly interest: InterestStore,
    /** the number of local watchers of a channel now */
    private readonly watchersOf: (channel: string) => number
  ) {}

  /** Channels subscribed on the bus now (tests, leak checks). */
  get channels (): number {
    return this.subscribed.size
  }

  /**
   * Brings the bus and the interest store in line with the local store for `channel`. Resolves once they reflect
   * its watchers as they are at some moment after the call; rejects when the bus or the store failed (the caller
   * undoes its change and syncs again).
   */
  async sync (channel: string, entityType: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      let pending = this.pending.get(channel)
      if (pending === undefined) {
        pending = { entityType, waiters: [] }
        this.pending.set(channel, pending)
      }
      pending.waiters.push({ resolve, reject })
      if (!this.running) void this.run()
    })
  }

  private async run (): Promise<void> {
    this.running = true
    try {
      while (this.pending.size > 0) {
        const round = this.pending
        this.pending = new Map()
        await this.apply(round)
      }
    } finally {
      this.running = false
    }
  }

  private async apply (round: Map<string, Pending>): Promise<void> {
    const join: string[] = []
    const leave: string[] = []
    const counts: InterestUpdate[] = []
    for (const [channel, { entityType }] of round) {
      const count = this.watchersOf(channel)
      if (count > 0 && !this.subscribed.has(channel)) join.push(channel)
      if (count === 0 && this.subscribed.has(channel)) leave.push(channel)
      counts.push({ channel, entityType, count })
    }
    let failure: Error | null = null
    try {
      // subscribed before the interest is visible: a publisher that sees it finds the subscription in place
      if (join.length > 0) {
        await this.bus.subscribe(join)
        for (const channel of join) this.subscribed.add(channel)
      }
      await this.interest.update(counts)
    } catch (err) {
      failure = err as Error
    }
    if (leave.length > 0) {
      try {
        await this.bus.unsubscribe(leave)
        for (const channel of leave) this.subscribed.delete(channel)
      } catch (err) {
        failure ??= err as Error
      }
    }
    for (const { waiters } of round.values()) {
      for (const waiter of waiters) {
        if (failure === null) waiter.resolve()
        else waiter.reject(failure)
      }
    }
  }
}
