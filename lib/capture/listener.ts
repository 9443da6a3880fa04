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
import type { Database, ListenSession } from './database.js'
import { TransactionCoalescer, isRowChange, type Change } from './coalesce.js'
import { Outbox } from './outbox.js'
import { NotifyVerifier } from './signature.js'
import { isDdlNote, transactionOf, unannouncedNote, type DdlNote } from './payloads.js'
import { OutboxPublisher, type OutboxBatchHandler, type OutboxSettings } from './publisher.js'
import type { Drops } from '../route/drops.js'
import { CaptureKeyError } from '../errors.js'

export type ListenerState = 'idle' | 'following' | 'listening' | 'reconnecting' | 'closed'

export interface ListenerEvents {
  onChange(change: Change): void
  /**
   * Changes of `database` may have been lost: its watchers must resync. `precaution`: this instance has just become
   * the first listener with a shared bus; it lost nothing itself, but the watchers of other instances may have (a
   * leader that died just before), so they are told too; it is not a gap of this instance.
   */
  onGap(database: string, reason: 'listener_gap' | 'leader_change' | 'unannounced', gap: { precaution: boolean }): void
  /** Outbox mode: routes a batch of numbered rows (lib/capture/publisher.ts). */
  onOutbox: OutboxBatchHandler
  /** The database's event trigger put the capture trigger on a new table, or could not (`error`). */
  onDdl(database: string, note: DdlNote): void
  /** A trigger said, unsigned, that its writing role may not announce changes: the database's grants need a look. */
  onUnannounced(database: string): void
}

export type { OutboxSettings } from './publisher.js'

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
  /** outbox mode: publishes the outbox while this instance leads */
  private readonly outbox: OutboxPublisher | null
  private readonly verifier = new NotifyVerifier()

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
    this.outbox = options.outbox === null
      ? null
      : new OutboxPublisher(db.name, new Outbox(options.channel), options.outbox, events.onOutbox, () => this.state === 'listening' ? this.session : null, log)
  }

  /** outbox mode: rows published (at least once) by this instance */
  get outboxPublished (): number {
    return this.outbox?.published ?? 0
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
    this.verifier.useKey(await this.readKey(session))
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

  /** Takes the lock (when electing) and listens. True when this instance now listens. */
  private async tryToLead (session: ListenSession): Promise<boolean> {
    if (this.options.leaderElection || this.outbox !== null) {
      const [row] = await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)::bigint) AS ok', [`fastify-changefeed:${this.options.channel}`])
      if (row?.ok !== true) return false
    }
    // the transactions over before LISTEN: their NOTIFYs can no longer reach this listener
    const [{ snap }] = await session.query<{ snap: string }>('SELECT pg_current_snapshot()::text AS snap')
    this.verifier.listening(snap)
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
      this.outbox.start()
    } else if (!first) {
      this.gaps++
      this.events.onGap(this.db.name, reason, { precaution: false })
    } else if (this.options.leaderElection) {
      this.events.onGap(this.db.name, reason, { precaution: true })
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
      const [row] = await Promise.race([
        session.query<{ snap: string }>('SELECT pg_current_snapshot()::text AS snap'),
        new Promise<never>((_resolve, reject) => { timeout = setTimeout(() => reject(new Error('no answer to the probe')), PROBE_TIMEOUT_MS) })
      ])
      if (this.session === session && this.state === 'listening') this.verifier.advance(row.snap)
    } catch (err) {
      if (this.session !== session) return
      void session.close().catch(() => {})
      this.onLost(err as Error)
    } finally {
      clearTimeout(timeout)
    }
  }

  /** Outbox mode: publishes what is waiting now (tests, and a NOTIFY's wake-up). */
  async drain (): Promise<void> {
    await this.outbox?.drain()
  }

  private onPayload (payload: string): void {
    if (this.state !== 'listening') return
    // outbox mode: the NOTIFY only wakes the publisher, which reads what the triggers recorded; it trusts nothing
    // the NOTIFY says (a forged wake-up costs one look at the outbox)
    if (payload === 'outbox') {
      if (this.outbox !== null) void this.drain()
      return
    }
    const body = this.verifier.verified(payload)
    if (body === null) return this.unsigned(payload)
    let row: unknown
    try {
      row = JSON.parse(body)
    } catch {
      row = null
    }
    const txid = transactionOf(row)
    if (txid === null) return this.drops.drop('malformed', { database: this.db.name, detail: `${body.length} bytes` })
    if (this.verifier.admit(payload, txid) === 'replayed') return this.drops.drop('replayed', { database: this.db.name })
    if (isDdlNote(row)) return this.events.onDdl(this.db.name, row)
    // outbox mode records changes; a NOTIFY carrying one comes from triggers installed for notify mode
    if (this.outbox !== null) return
    if (!isRowChange(row)) return this.drops.drop('malformed', { database: this.db.name, detail: `${body.length} bytes` })
    this.coalescer.push(row)
  }

  /**
   * An unsigned payload: a forgery, or the note of a trigger whose writing role may not announce changes
   * (sql/changefeed.sql, changefeed_pass). Nothing in it is believed; a note only makes the server look at the
   * database's grants, which tell whether such a role exists.
   */
  private unsigned (payload: string): void {
    const note = unannouncedNote(payload)
    if (note === null) return this.drops.drop('forged', { database: this.db.name })
    this.drops.drop('unannounced', { database: this.db.name, detail: note.role })
    this.events.onUnannounced(this.db.name)
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
    this.outbox?.stop()
    this.coalescer.flush()
    const session = this.session
    this.session = null
    await session?.close()
  }
}
