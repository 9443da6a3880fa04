/**
 * What every cluster interest store shares (Redis, NATS): this instance's counts, the rule that the first and
 * last watcher of a channel are written at once while counts in between are batched, the heartbeat and flush
 * timers, and rewriting everything from the local store after the broker lost its state.
 *
 * Writes carry no value of their own: a store writes what this instance's counts are when the write is issued, and
 * its writes go out in order on one connection (Redis commands, NATS puts). So writes that overlap, a flush and a
 * last watcher leaving, can only ever leave the latest count behind.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { InterestStore, InterestUpdate, LocalSnapshot } from './interest.js'

const FLUSH_MS = 250
/** how long a close waits for the heartbeat or flush on its way */
const STOP_WAIT_MS = 1000

export abstract class ClusterInterest implements InterestStore {
  readonly local = false
  /** this instance's watchers per channel */
  protected readonly counts = new Map<string, { entityType: string, count: number }>()
  /** this instance's subscriptions per type */
  protected readonly typeCounts = new Map<string, number>()
  private readonly dirtyChannels = new Set<string>()
  private readonly dirtyTypes = new Set<string>()
  private heartbeatTimer: NodeJS.Timeout | null = null
  /** the next flush; null once stopped */
  private flushTimer: NodeJS.Timeout | null = null
  /** the heartbeat and the flush on their way, if any */
  private beating: Promise<void> | null = null
  private flushing: Promise<void> | null = null

  constructor (
    readonly instanceId: string,
    protected readonly ttlMs: number,
    private readonly snapshot: LocalSnapshot,
    protected readonly log: FastifyBaseLogger
  ) {}

  /**
   * Writes this instance's current count of each channel (0: removes its entry). `crossed`: these channels went
   * from no watcher to some or back (a store that indexes the entries an instance holds updates its index then
   * only); false for counts that changed in between.
   */
  protected abstract writeChannels (channels: readonly string[], crossed: boolean): Promise<void>
  /** Writes this instance's current totals of these types (0: removes its entry). */
  protected abstract writeTypes (types: readonly string[]): Promise<void>
  /** Renews this instance, rewrites after a loss, removes the instances that stopped. */
  protected abstract heartbeat (): Promise<void>
  abstract isWatched (channel: string): Promise<boolean>
  abstract watchers (channel: string): Promise<number>
  abstract totals (): Promise<Record<string, number>>
  /** The instances whose heartbeat has not lapsed (this one included): presence drops the others' members. */
  abstract liveInstances (): Promise<Set<string>>
  abstract close (): Promise<void>

  /** This instance's count of a channel now (what a write of it writes). */
  protected countOf (channel: string): number {
    return this.counts.get(channel)?.count ?? 0
  }

  protected startTimers (): void {
    const warn = (what: string) => (err: Error): void => { this.log.warn({ err: err.message }, `changefeed: ${what} failed`) }
    this.heartbeatTimer = setInterval(() => {
      // one at a time: a slow store is not sent a second renewal while the first is on its way
      if (this.beating === null) this.beating = this.heartbeat().catch(warn('cluster heartbeat')).finally(() => { this.beating = null })
    }, Math.max(100, Math.floor(this.ttlMs / 3)))
    this.heartbeatTimer.unref()
    this.scheduleFlush(FLUSH_MS, warn('cluster count flush'))
  }

  /**
   * The next flush, `delayMs` from now. Flushes never overlap, and a slow one spaces out the next (twice its time):
   * when many sockets arrive at once, the counts in between yield the store to the first and last watchers, which
   * the sockets wait for.
   */
  private scheduleFlush (delayMs: number, onError: (err: Error) => void): void {
    const timer = setTimeout(() => {
      const started = Date.now()
      this.flushing = this.flush().catch(onError).finally(() => {
        this.flushing = null
        if (this.flushTimer === timer) this.scheduleFlush(Math.max(FLUSH_MS, 2 * (Date.now() - started)), onError)
      })
    }, delayMs)
    timer.unref()
    this.flushTimer = timer
  }

  /**
   * No heartbeat or flush starts from now on; resolves once the one on its way (if any) is done, so that a close
   * that removes this instance's entries next is not undone by a renewal landing after it (bounded: with the store
   * away it would wait for the store).
   */
  protected async stopTimers (): Promise<void> {
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer)
    if (this.flushTimer !== null) clearTimeout(this.flushTimer)
    this.heartbeatTimer = this.flushTimer = null
    if (this.beating === null && this.flushing === null) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([Promise.all([this.beating, this.flushing]), new Promise((resolve) => { timer = setTimeout(resolve, STOP_WAIT_MS) })])
    clearTimeout(timer)
  }

  async update (updates: readonly InterestUpdate[]): Promise<void> {
    const now: string[] = []
    for (const { channel, entityType, count } of updates) {
      const before = this.countOf(channel)
      if (count === 0) this.counts.delete(channel)
      else this.counts.set(channel, { entityType, count })
      this.typeCounts.set(entityType, (this.typeCounts.get(entityType) ?? 0) + count - before)
      this.dirtyTypes.add(entityType)
      if ((before === 0) === (count === 0)) {
        if (count !== before) this.dirtyChannels.add(channel)
      } else {
        this.dirtyChannels.delete(channel)
        now.push(channel)
      }
    }
    if (now.length > 0) await this.writeChannels(now, true)
  }

  /** Writes the counts that changed since the last flush (neither first nor last watcher). */
  private async flush (): Promise<void> {
    const channels = [...this.dirtyChannels]
    const types = [...this.dirtyTypes]
    this.dirtyChannels.clear()
    this.dirtyTypes.clear()
    try {
      if (channels.length > 0) await this.writeChannels(channels, false)
      if (types.length > 0) await this.writeTypes(types)
    } catch (err) {
      // written at the next flush: a count that does not change again would stay wrong in the cluster
      for (const channel of channels) this.dirtyChannels.add(channel)
      for (const type of types) this.dirtyTypes.add(type)
      throw err
    }
  }

  /**
   * After a broker restart: everything this instance watches, from the local store, written again; and a channel it
   * counted that the local store no longer holds (its last watcher left, its round not applied yet) written as none,
   * since an entry of it may have been written again after the loss, and the round would then find nothing to do.
   */
  protected async rewrite (): Promise<void> {
    const counted = [...this.counts.keys()]
    this.counts.clear()
    this.typeCounts.clear()
    for (const { channel, entityType, count } of this.snapshot()) {
      this.counts.set(channel, { entityType, count })
      this.typeCounts.set(entityType, (this.typeCounts.get(entityType) ?? 0) + count)
    }
    await this.writeChannels([...new Set([...counted, ...this.counts.keys()])], true)
    for (const type of this.typeCounts.keys()) this.dirtyTypes.add(type)
  }
}
