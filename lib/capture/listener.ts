/**
 * One dedicated LISTEN connection per database. With a shared bus, exactly one instance per database listens (the
 * leader): it holds a PostgreSQL advisory lock on this very connection, so the lock goes when the connection goes,
 * and a follower that keeps trying takes over within `capture.leaderRetryMs`. NOTIFY is lost while nobody listens,
 * so every start of listening other than an instance's very first fires `onGap`: the sockets watching this
 * database's entities must resync. Never silent. With a shared bus, an instance's first start of listening tells
 * the other instances too, as a precaution (a leader may have died just before it started).
 *
 * Outbox mode: the leader always elects (even alone), a NOTIFY only wakes it, and it publishes the outbox from
 * the cursor stored in the database; nothing is lost while nobody listens, so taking over is not a gap.
 */
import type { FastifyBaseLogger } from 'fastify'
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { Database, ListenSession } from './database.js'
import { TransactionCoalescer, isRowChange, type Change, type RowChange } from './coalesce.js'
import { Outbox } from './outbox.js'
import type { Drops } from '../drops.js'
import { CaptureKeyError } from '../errors.js'

export type ListenerState = 'idle' | 'following' | 'listening' | 'reconnecting' | 'closed'

export interface ListenerEvents {
  onChange(change: Change): void
  /**
   * Changes of `database` may have been lost: its watchers must resync. `precaution`: this instance has just become
   * the first listener with a shared bus; it lost nothing itself, but the watchers of other instances may have (a
   * leader that died just before), so they are told too; it is not a gap of this instance.
   */
  onGap(database: string, reason: 'listener_gap' | 'leader_change', precaution: boolean): void
  /**
   * Outbox mode: routes a batch of numbered rows; false when any of it failed (the batch is published again).
   * `final`: the batch failed before; give up on what fails now (its watchers resync) rather than stall.
   * `current()`: false once this instance is no longer the one publishing (its connection went).
   */
  onOutbox(database: string, rows: RowChange[], attempt: { final: boolean, current: () => boolean }): Promise<boolean>
  /** The database's event trigger put the capture trigger on a new table, or could not (`error`). */
  onDdl(database: string, note: DdlNote): void
}

/** What the event trigger tells the listener about a table created while it runs. */
export interface DdlNote { ddl: 'installed' | 'failed', s: string, t: string, error?: string }

const isDdlNote = (value: unknown): value is DdlNote => value !== null && typeof value === 'object' &&
  ((value as DdlNote).ddl === 'installed' || (value as DdlNote).ddl === 'failed') && typeof (value as DdlNote).t === 'string'

/** hex characters of the HMAC-SHA-256 that precede every signed NOTIFY payload (sql/changefeed.sql) */
const SIGNATURE_LENGTH = 64
/** how many signatures are remembered against replays */
const SEEN_SIGNATURES = 50_000

/** attempts at one outbox batch before what still fails is given up on */
const OUTBOX_ATTEMPTS = 3

export interface OutboxSettings {
  batchSize: number
  pollIntervalMs: number
  retentionSeconds: number
  maxRows: number
  pruneIntervalSeconds: number
}

export interface ListenerOptions {
  channel: string
  reconnectMaxDelayMs: number
  /** true with a shared bus: only the holder of the advisory lock listens */
  leaderElection: boolean
  leaderRetryMs: number
  /** how often the connection is checked with a query (0: never); a connection that does not answer is replaced */
  probeIntervalMs: number
  /** outbox mode, or null for notify mode */
  outbox: OutboxSettings | null
}

const PROBE_TIMEOUT_MS = 5000

export class ListenerConnection {
  state: ListenerState = 'idle'
  /** how many times the connection was lost and re-established */
  reconnects = 0
  /** how many times this instance became the listener (leader) for the database */
  leaderships = 0
  /** how many times watchers were told that changes may have been lost */
  gaps = 0
  private session: ListenSession | null = null
  private timer: NodeJS.Timeout | null = null
  private probeTimer: NodeJS.Timeout | null = null
  private attempt = 0
  private lost = false
  private readonly coalescer: TransactionCoalescer
  private readonly outbox: Outbox | null
  private outboxTimer: NodeJS.Timeout | null = null
  private lastPrune = 0
  private draining: Promise<void> | null = null
  private drainingSession: ListenSession | null = null
  private drainAgain = false
  private failedAttempts = 0
  /** outbox mode: rows published (at least once) by this instance */
  outboxPublished = 0
  /** the key the capture triggers sign with: read on every connection, so a reinstall is picked up */
  private key: Buffer | null = null
  /** the latest signatures (half of each, oldest first): a payload sent again is not a change */
  private readonly seenSignatures = new Set<string>()

  constructor (
    private readonly db: Database,
    private readonly options: ListenerOptions,
    private readonly events: ListenerEvents,
    private readonly log: FastifyBaseLogger,
    private readonly drops: Drops,
    /** the database's tenant (database per tenant), or null */
    tenant: string | null
  ) {
    this.coalescer = new TransactionCoalescer(db.name, tenant, events.onChange)
    this.outbox = options.outbox === null ? null : new Outbox(options.channel)
  }

  get isLeader (): boolean {
    return this.state === 'listening'
  }

  /** First connection: a failure here is the caller's to report (the database is not reachable at start). */
  async start (): Promise<void> {
    const session = await this.db.connectListener({
      onNotify: (payload) => this.onPayload(payload),
      onLost: (err) => this.onLost(err)
    })
    await this.useSession(session)
  }

  private async useSession (session: ListenSession): Promise<void> {
    this.session = session
    this.key = await this.readKey(session)
    this.startProbe()
    if (await this.tryToLead(session)) return
    this.state = 'following'
    this.log.info({ database: this.db.name }, 'changefeed: another instance listens to this database; following')
    this.schedule(() => this.retryLead(), this.options.leaderRetryMs)
  }

  private async readKey (session: ListenSession): Promise<Buffer> {
    try {
      const [row] = await session.query<{ key: Uint8Array }>('SELECT key FROM changefeed_key')
      if (row === undefined) throw new Error('the table is empty')
      return Buffer.from(row.key)
    } catch (err) {
      throw new CaptureKeyError(this.db.name, (err as Error).message)
    }
  }

  /**
   * The JSON of a NOTIFY the capture triggers signed; null for anything else (any role may NOTIFY). Any role may
   * also LISTEN, and send a signed payload it saw once more: a signature already seen lately is refused too.
   */
  private verified (payload: string): string | null {
    if (this.key === null || payload.length <= SIGNATURE_LENGTH) return null
    const body = payload.slice(SIGNATURE_LENGTH)
    const expected = createHmac('sha256', this.key).update(body, 'utf8').digest()
    const given = Buffer.from(payload.slice(0, SIGNATURE_LENGTH), 'hex')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
    const seen = payload.slice(0, 32)
    if (this.seenSignatures.has(seen)) return null
    this.seenSignatures.add(seen)
    if (this.seenSignatures.size > SEEN_SIGNATURES) this.seenSignatures.delete(this.seenSignatures.values().next().value as string)
    return body
  }

  /** Takes the lock (when electing) and listens. True when this instance now listens. */
  private async tryToLead (session: ListenSession): Promise<boolean> {
    if (this.options.leaderElection || this.outbox !== null) {
      const [row] = await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [`fastify-changefeed:${this.options.channel}`])
      if (row?.ok !== true) return false
    }
    await session.listen(this.options.channel)
    if ((this.state as ListenerState) === 'closed') return true
    const first = this.leaderships === 0 && !this.lost
    this.state = 'listening'
    this.leaderships++
    this.attempt = 0
    if (this.lost) this.reconnects++
    const reason = this.lost ? 'listener_gap' : 'leader_change'
    this.lost = false
    // listening is leading: this instance publishes the database's changes (alone, or holding the lock)
    this.log.info({ database: this.db.name, leader: true, election: this.options.leaderElection, outbox: this.outbox !== null }, 'changefeed: listening')
    if (this.outbox !== null) {
      this.startOutbox()
    } else if (!first) {
      this.gaps++
      this.events.onGap(this.db.name, reason, false)
    } else if (this.options.leaderElection) {
      this.events.onGap(this.db.name, reason, true)
    }
    return true
  }

  private async retryLead (): Promise<void> {
    const session = this.session
    if (this.state !== 'following' || session === null) return
    try {
      if (!await this.tryToLead(session)) this.schedule(() => this.retryLead(), this.options.leaderRetryMs)
    } catch (err) {
      // the connection failed under us: onLost takes it from here
      this.log.debug({ database: this.db.name, err: (err as Error).message }, 'changefeed: leadership attempt failed')
    }
  }

  /**
   * A connection can die without a word (a half-open TCP connection, a frozen server): LISTEN would wait forever.
   * A periodic query on the same connection notices; one that fails or does not answer in time is replaced.
   */
  private startProbe (): void {
    if (this.options.probeIntervalMs <= 0 || this.probeTimer !== null) return
    this.probeTimer = setInterval(() => { void this.probe() }, this.options.probeIntervalMs)
    this.probeTimer.unref()
  }

  private async probe (): Promise<void> {
    const session = this.session
    if (session === null) return
    let timeout: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        session.query('SELECT 1'),
        new Promise((_resolve, reject) => { timeout = setTimeout(() => reject(new Error('no answer to the probe')), PROBE_TIMEOUT_MS) })
      ])
    } catch (err) {
      if (this.session !== session) return
      void session.close().catch(() => {})
      this.onLost(err as Error)
    } finally {
      clearTimeout(timeout)
    }
  }

  private startOutbox (): void {
    if (this.outboxTimer === null) {
      this.outboxTimer = setInterval(() => { void this.drain() }, this.options.outbox!.pollIntervalMs)
      this.outboxTimer.unref()
    }
    void this.drain()
  }

  /**
   * Publishes the outbox: numbers what is committed, routes what lies after the published cursor, then moves the
   * cursor. A batch that fails is published again from the cursor (at least once; positions let clients drop
   * the repeats), and after OUTBOX_ATTEMPTS what still fails is given up on, so one poisonous change cannot stall
   * the rest. One drain per session at a time; a wake-up during one runs another after it.
   */
  async drain (): Promise<void> {
    if (this.draining !== null && this.drainingSession === this.session) {
      this.drainAgain = true
      return await this.draining
    }
    const session = this.session
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
    const outbox = this.outbox!
    const settings = this.options.outbox!
    const current = (): boolean => this.session === session && this.state === 'listening'
    try {
      do {
        this.drainAgain = false
        if (session === null || !current()) return
        const query = session.query
        if (Date.now() - this.lastPrune > settings.pruneIntervalSeconds * 1000) {
          this.lastPrune = Date.now()
          const pruned = await outbox.prune(query, settings.retentionSeconds, settings.maxRows)
          if (pruned > 0) this.log.debug({ database: this.db.name, pruned }, 'changefeed: outbox pruned')
        }
        const state = await outbox.state(query)
        let cursor = state.published
        for (;;) {
          await outbox.number(query, settings.batchSize)
          const { rows, last } = await outbox.read(query, state.epoch, cursor, settings.batchSize)
          if (rows.length === 0) break
          const final = this.failedAttempts + 1 >= OUTBOX_ATTEMPTS
          if (!await this.events.onOutbox(this.db.name, rows, { final, current })) {
            this.failedAttempts++
            this.log.warn({ database: this.db.name, from: cursor, attempt: this.failedAttempts }, 'changefeed: publishing the outbox failed; retrying from the cursor')
            return
          }
          this.failedAttempts = 0
          if (!current()) return
          await outbox.markPublished(query, last)
          this.outboxPublished += rows.length
          cursor = last
        }
      } while (this.drainAgain)
    } catch (err) {
      // the connection failed under us (onLost takes over), or a query failed: the next wake-up or poll retries
      this.log.warn({ database: this.db.name, err: (err as Error).message }, 'changefeed: outbox drain failed')
    }
  }

  private onPayload (payload: string): void {
    if (this.state !== 'listening') return
    // outbox mode: the NOTIFY only wakes the publisher, which reads what the triggers recorded; it trusts nothing
    // the NOTIFY says (a forged wake-up costs one look at the outbox)
    if (payload === 'outbox') {
      if (this.outbox !== null) void this.drain()
      return
    }
    const body = this.verified(payload)
    if (body === null) return this.drops.drop('forged', { database: this.db.name })
    let row: unknown
    try {
      row = JSON.parse(body)
    } catch {
      row = null
    }
    if (isDdlNote(row)) return this.events.onDdl(this.db.name, row)
    // outbox mode records changes; a NOTIFY carrying one comes from triggers installed for notify mode
    if (this.outbox !== null) return
    if (!isRowChange(row)) return this.drops.drop('malformed', { database: this.db.name, detail: `${body.length} bytes` })
    this.coalescer.push(row)
  }

  private onLost (err: Error): void {
    if (this.state === 'closed') return
    this.coalescer.flush()
    this.session = null
    // a follower that loses its connection missed nothing: the leader still listens
    if (this.state === 'listening') this.lost = true
    this.state = 'reconnecting'
    this.log.warn({ database: this.db.name, err: err.message }, 'changefeed: listener connection lost, reconnecting')
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    // Full jitter: a random delay up to an exponentially growing cap, so many instances do not reconnect in step.
    const cap = Math.min(this.options.reconnectMaxDelayMs, 100 * 2 ** this.attempt)
    this.attempt++
    this.schedule(() => this.reconnect(), Math.random() * cap)
  }

  private schedule (task: () => Promise<void>, ms: number): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = setTimeout(() => { this.timer = null; void task() }, ms)
  }

  private async reconnect (): Promise<void> {
    if (this.state === 'closed') return
    try {
      const session = await this.db.connectListener({
        onNotify: (payload) => this.onPayload(payload),
        onLost: (err) => this.onLost(err)
      })
      if ((this.state as ListenerState) === 'closed') {
        await session.close()
        return
      }
      await this.useSession(session)
    } catch (err) {
      this.log.warn({ database: this.db.name, err: (err as Error).message }, 'changefeed: listener reconnect failed')
      if ((this.state as ListenerState) !== 'closed') {
        this.session = null
        this.state = 'reconnecting'
        this.scheduleReconnect()
      }
    }
  }

  /** Stops listening; closing the connection releases the leadership lock at once. */
  async close (): Promise<void> {
    this.state = 'closed'
    if (this.timer !== null) clearTimeout(this.timer)
    if (this.probeTimer !== null) clearInterval(this.probeTimer)
    if (this.outboxTimer !== null) clearInterval(this.outboxTimer)
    this.coalescer.flush()
    const session = this.session
    this.session = null
    await session?.close()
  }
}
