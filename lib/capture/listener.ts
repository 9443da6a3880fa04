/**
 * One dedicated LISTEN connection per database. With a shared bus, exactly one instance per database listens (the
 * leader): it holds a PostgreSQL advisory lock on this very connection, so the lock goes when the connection goes,
 * and a follower that keeps trying takes over within `capture.leaderRetryMs`. NOTIFY is lost while nobody listens,
 * so every start of listening other than an instance's very first fires `onGap`: the sockets watching this
 * database's entities must resync. Never silent. With a shared bus, an instance's first start of listening tells
 * the other instances too, as a precaution (a leader may have died just before it started). In notify mode a
 * follower listens on standby (standby.ts): taking over, it publishes what the old leader had not: no gap.
 *
 * Outbox mode: the leader always elects (even alone), a NOTIFY only wakes it, and it publishes the outbox from
 * the cursor stored in the database; nothing is lost while nobody listens, so taking over is not a gap.
 */
import type { FastifyBaseLogger } from 'fastify'
import { snapshotWithin, type Database, type ListenSession } from './database.js'
import { TransactionCoalescer, isRowChange } from './coalesce.js'
import { Outbox } from './outbox.js'
import { NotifyVerifier, readNotifyKey } from './signature.js'
import { isDdlNote, unannouncedNote } from './payloads.js'
import { OutboxPublisher } from './publisher.js'
import { HandledLog, Standby, isMark } from './standby.js'
import type { ListenerEvents, ListenerOptions, ListenerState } from './listener-events.js'
import type { Drops } from '../route/drops.js'

export type { ListenerEvents, ListenerOptions, ListenerState, OutboxSettings } from './listener-events.js'

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
  /** a follower's standby, and the leader's record of what it handed on (notify mode with election) */
  readonly standby: Standby | null = null
  readonly handled: HandledLog | null = null
  /** the changes emitted now are a takeover's (the old leader may have published them) */
  private handingOver = false

  constructor (
    private readonly db: Database,
    private readonly options: ListenerOptions,
    private readonly events: ListenerEvents,
    private readonly log: FastifyBaseLogger,
    private readonly drops: Drops,
    /** the database's tenant (database per tenant), or null */
    tenant: string | null
  ) {
    const { standby } = options
    if (standby !== null && options.leaderElection && options.outbox === null) {
      this.standby = new Standby(standby, db.name, standby.record, log)
      this.handled = new HandledLog(db.name, standby.record, log)
    }
    this.coalescer = new TransactionCoalescer(db.name, tenant, (change) => {
      if (this.handingOver) change.handoff = true
      const routed = events.onChange(change)
      this.handled?.track(change.txid, routed)
    })
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
    this.verifier.useKey(await readNotifyKey(session, this.db.name))
    this.startProbe()
    if (await this.tryToLead(session)) return
    this.state = 'following'
    if (this.standby !== null) {
      await this.listen(session)
      await session.query('SELECT pg_notify($1, $2)', [this.options.channel, this.standby.start()])
    }
    this.log.info({ database: this.db.name, standby: this.standby !== null }, 'changefeed: another instance listens to this database; following')
    this.schedule(() => this.retryLead(), this.options.leaderRetryMs)
  }

  /** Takes the lock (when electing) and listens. True when this instance now listens. */
  private async tryToLead (session: ListenSession): Promise<boolean> {
    if (this.options.leaderElection || this.outbox !== null) {
      const [row] = await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)::bigint) AS ok', [`fastify-changefeed:${this.options.channel}`])
      if (row?.ok !== true) return false
    }
    const standing = this.standby?.listening === true
    if (!standing) await this.listen(session)
    // on standby, NOTIFYs go on into the buffer until the takeover has taken from it what the old leader had not
    const gapless = standing && await this.standby!.takeOver((transactions) => {
      this.handingOver = true
      for (const rows of transactions) for (const row of rows) this.coalescer.push(row)
      this.coalescer.flush()
      this.handingOver = false
    })
    this.standby?.stop()
    // closed, or the connection went while the record was read: onLost took it from there
    if ((this.state as ListenerState) === 'closed' || this.session !== session) return true
    const first = this.leaderships === 0 && !this.lost && !standing
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
    } else if (!first && !gapless) {
      this.gaps++
      this.events.onGap(this.db.name, reason, { precaution: false })
    } else if (this.options.leaderElection && !gapless) {
      this.events.onGap(this.db.name, reason, { precaution: true })
    }
    return true
  }

  /** LISTEN, after a snapshot of the transactions over before it: their NOTIFYs can no longer reach this listener. */
  private async listen (session: ListenSession): Promise<void> {
    const [{ snap }] = await session.query<{ snap: string }>('SELECT pg_current_snapshot()::text AS snap')
    this.verifier.listening(snap)
    await session.listen(this.options.channel)
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
    try {
      const snap = await snapshotWithin(session)
      if (this.session === session && (this.state === 'listening' || this.standby?.listening === true)) this.verifier.advance(snap)
    } catch (err) {
      if (this.session !== session) return
      void session.close().catch(() => {})
      this.onLost(err as Error)
    }
  }

  /** Outbox mode: publishes what is waiting now (tests, and a NOTIFY's wake-up). */
  async drain (): Promise<void> {
    await this.outbox?.drain()
  }

  private onPayload (payload: string): void {
    const standby = this.state === 'following' ? this.standby : null
    if (this.state !== 'listening' && standby?.listening !== true) return
    // outbox mode: the NOTIFY only wakes the publisher, which reads what the triggers recorded; it trusts nothing
    // the NOTIFY says (a forged wake-up costs one look at the outbox)
    if (payload === 'outbox') {
      if (this.outbox !== null) void this.drain()
      return
    }
    // a closing leader let go of the lock: try now (a forged notice costs a try; none while one runs: re-entrant lock)
    if (payload === 'handoff') return standby !== null && this.timer !== null ? this.schedule(() => this.retryLead(), 0) : undefined
    // a follower's mark, in its place among the changes: the leader records it after them
    if (isMark(payload)) {
      if (standby !== null) return standby.buffer.mark(payload)
      this.coalescer.flush()
      return this.handled?.mark(payload)
    }
    const verdict = this.verifier.check(payload)
    if (standby !== null) {
      // a follower keeps verified row changes only: the leader reports the rest
      if (verdict.kind === 'fresh' && isRowChange(verdict.row)) standby.buffer.push(verdict.row)
      return
    }
    if (verdict.kind === 'unsigned') return this.unsigned(payload)
    if (verdict.kind === 'replayed') return this.drops.drop('replayed', { database: this.db.name })
    const { row } = verdict
    if (verdict.kind === 'fresh' && isDdlNote(row)) return this.events.onDdl(this.db.name, row)
    // outbox mode records changes; a NOTIFY carrying one comes from triggers installed for notify mode
    if (this.outbox !== null && verdict.kind === 'fresh') return
    if (verdict.kind !== 'fresh' || !isRowChange(row)) return this.drops.drop('malformed', { database: this.db.name, detail: `${verdict.bytes} bytes` })
    this.coalescer.push(row)
  }

  /**
   * An unsigned payload: a forgery, or the note of a trigger whose writing role may not announce changes
   * (sql/changefeed.sql, changefeed_pass). Nothing in it is believed; a note only makes the server look at the grants.
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
    // a follower that loses its connection missed nothing: the leader still listens (its standby starts again)
    this.standby?.stop()
    if (this.state === 'listening') {
      this.lost = true
      this.handled?.deposed()
    }
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

  /**
   * Stops listening; closing the connection releases the leadership lock at once. A leader first hands on and
   * records what it has taken, so the instance taking over starts right after it.
   */
  async close (): Promise<void> {
    const leading = this.state === 'listening'
    this.state = 'closed'
    if (this.timer !== null) clearTimeout(this.timer)
    if (this.probeTimer !== null) clearInterval(this.probeTimer)
    this.outbox?.stop()
    this.coalescer.flush()
    if (leading) await this.handled?.settled()
    const session = this.session
    this.session = null
    // let go of the lock, then say so to the followers on standby
    if (leading && this.standby !== null) await session?.query('SELECT pg_advisory_unlock_all(), pg_notify($1, $2)', [this.options.channel, 'handoff']).catch(() => {})
    await session?.close()
  }
}
