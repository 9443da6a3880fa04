/**
 * Outbox mode, on the leader: publishes the outbox from the cursor stored in the database. Numbers what is
 * committed, routes what lies after the published cursor, then moves the cursor. A batch that fails is published
 * again from the cursor (at least once; positions let clients drop the repeats), and after OUTBOX_ATTEMPTS what
 * still fails is given up on, so one poisonous change cannot stall the rest. One drain per session at a time; a
 * wake-up during one runs another after it. Prunes what was published long enough ago.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { ListenSession } from './database.js'
import type { RowChange } from './coalesce.js'
import type { Outbox } from './outbox.js'

/** attempts at one outbox batch before what still fails is given up on */
const OUTBOX_ATTEMPTS = 3

export interface OutboxSettings {
  batchSize: number
  pollIntervalMs: number
  retentionSeconds: number
  maxRows: number
  pruneIntervalSeconds: number
}

/**
 * Routes a batch of numbered rows; false when any of it failed (the batch is published again). `final`: the batch
 * failed before; give up on what fails now (its watchers resync) rather than stall. `current()`: false once this
 * instance is no longer the one publishing (its connection went).
 */
export type OutboxBatchHandler = (database: string, rows: RowChange[], attempt: { final: boolean, current: () => boolean }) => Promise<boolean>

export class OutboxPublisher {
  /** rows published (at least once) by this instance */
  published = 0
  private timer: NodeJS.Timeout | null = null
  private lastPrune = 0
  private draining: Promise<void> | null = null
  private drainingSession: ListenSession | null = null
  private drainAgain = false
  private failedAttempts = 0

  constructor (
    private readonly database: string,
    private readonly outbox: Outbox,
    private readonly settings: OutboxSettings,
    private readonly onBatch: OutboxBatchHandler,
    /** the session this instance leads on now, or null (not leading) */
    private readonly leading: () => ListenSession | null,
    private readonly log: FastifyBaseLogger
  ) {}

  /** Publishes now, and on every poll interval from now on. */
  start (): void {
    if (this.timer === null) {
      this.timer = setInterval(() => { void this.drain() }, this.settings.pollIntervalMs)
      this.timer.unref()
    }
    void this.drain()
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  async drain (): Promise<void> {
    const session = this.leading()
    if (this.draining !== null && this.drainingSession === session) {
      this.drainAgain = true
      return await this.draining
    }
    const run: Promise<void> = this.drainLoop(session).finally(() => {
      if (this.draining === run) {
        this.draining = null
        this.drainingSession = null
      }
    })
    this.draining = run
    this.drainingSession = session
    await run
  }

  private async drainLoop (session: ListenSession | null): Promise<void> {
    const { outbox, settings } = this
    const current = (): boolean => session !== null && this.leading() === session
    try {
      do {
        this.drainAgain = false
        if (session === null || !current()) return
        const query = session.query
        if (Date.now() - this.lastPrune > settings.pruneIntervalSeconds * 1000) {
          this.lastPrune = Date.now()
          const pruned = await outbox.prune(query, settings.retentionSeconds, settings.maxRows)
          if (pruned > 0) this.log.debug({ database: this.database, pruned }, 'changefeed: outbox pruned')
        }
        const state = await outbox.state(query)
        let cursor = state.published
        for (;;) {
          await outbox.number(query, settings.batchSize)
          const { rows, last } = await outbox.read(query, state.epoch, cursor, settings.batchSize)
          if (rows.length === 0) break
          const final = this.failedAttempts + 1 >= OUTBOX_ATTEMPTS
          if (!await this.onBatch(this.database, rows, { final, current })) {
            this.failedAttempts++
            this.log.warn({ database: this.database, from: cursor, attempt: this.failedAttempts }, 'changefeed: publishing the outbox failed; retrying from the cursor')
            return
          }
          this.failedAttempts = 0
          if (!current()) return
          await outbox.markPublished(query, last)
          this.published += rows.length
          cursor = last
        }
      } while (this.drainAgain)
    } catch (err) {
      // the connection failed under us (the listener reconnects), or a query failed: the next wake-up or poll retries
      this.log.warn({ database: this.database, err: (err as Error).message }, 'changefeed: outbox drain failed')
    }
  }
}
