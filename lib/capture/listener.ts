/**
 * One dedicated LISTEN connection per database. With a shared bus, exactly one instance per database listens (the
 * leader): it holds a PostgreSQL advisory lock on this very connection, so the lock goes when the connection goes,
 * and a follower that keeps trying takes over within `capture.leaderRetryMs`. NOTIFY is lost while nobody listens,
 * so every start of listening other than the very first of a lone instance fires `onGap`: the sockets watching
 * this database's entities must resync. Never silent.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database, ListenSession } from './database.js'
import { TransactionCoalescer, isRowChange, type Change } from './coalesce.js'

export type ListenerState = 'idle' | 'following' | 'listening' | 'reconnecting' | 'closed'

export interface ListenerEvents {
  onChange(change: Change): void
  onGap(database: string, reason: 'listener_gap' | 'leader_change'): void
}

export interface ListenerOptions {
  channel: string
  reconnectMaxDelayMs: number
  /** true with a shared bus: only the holder of the advisory lock listens */
  leaderElection: boolean
  leaderRetryMs: number
  /** how often the connection is checked with a query (0: never); a connection that does not answer is replaced */
  probeIntervalMs: number
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

  constructor (
    private readonly db: Database,
    private readonly options: ListenerOptions,
    private readonly events: ListenerEvents,
    private readonly log: FastifyBaseLogger
  ) {
    this.coalescer = new TransactionCoalescer(db.name, events.onChange)
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
    this.startProbe()
    if (await this.tryToLead(session)) return
    this.state = 'following'
    this.log.info({ database: this.db.name }, 'changefeed: another instance listens to this database; following')
    this.schedule(() => this.retryLead(), this.options.leaderRetryMs)
  }

  /** Takes the lock (when electing) and listens. True when this instance now listens. */
  private async tryToLead (session: ListenSession): Promise<boolean> {
    if (this.options.leaderElection) {
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
    this.log.info({ database: this.db.name, leader: this.options.leaderElection }, 'changefeed: listening')
    if (!(first && !this.options.leaderElection)) {
      this.gaps++
      this.events.onGap(this.db.name, reason)
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

  private onPayload (payload: string): void {
    if (this.state !== 'listening') return
    let row: unknown
    try {
      row = JSON.parse(payload)
    } catch {
      row = null
    }
    if (!isRowChange(row)) {
      this.log.warn({ database: this.db.name, length: payload.length }, 'changefeed: ignored a NOTIFY that is not a row change')
      return
    }
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
    this.coalescer.flush()
    const session = this.session
    this.session = null
    await session?.close()
  }
}
