/**
 * Leadership that moves without a gap (notify mode, shared bus). A follower listens too: it verifies every NOTIFY as
 * the leader does and keeps the recent transactions in a StandbyBuffer. The leader records, in the bus, the last
 * transaction it has handed on together with every one before it (HandledLog). PostgreSQL delivers NOTIFYs to every
 * listener in commit order, and the leader hands transactions on in that order, so what it handed on is a prefix of
 * what the follower saw: when the follower becomes the leader, it publishes the transactions its buffer holds after
 * the recorded one, and nothing was lost. A follower that starts listening sends a mark on the channel, which every
 * listener gets in its place among the changes and the leader records in its turn: a quiet database's follower is
 * covered too. When the recorded transaction (or mark) is not in the buffer (the follower started listening after it
 * and its mark was not recorded, the buffer overflowed past it, the record expired or cannot be read), that cannot be
 * shown, and the takeover is a gap as without a standby.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { RowChange } from './coalesce.js'
import type { HandoffRecord } from '../bus/handoff-record.js'

export type { HandoffRecord }

export interface StandbySettings {
  /** transactions a follower keeps at most; beyond, the oldest are dropped */
  maxTransactions: number
  /** a follower drops transactions older than this (the newest is always kept) */
  windowMs: number
}

interface Held { txid: string, at: number, rows: RowChange[] }

/** A follower's mark (anyone may send one: it only makes the leader record its place among the changes). */
export const isMark = (payload: string): boolean => payload.length <= 64 && payload.startsWith('standby:')

/** A follower's recent verified row changes, by transaction, in the order they came. */
export class StandbyBuffer {
  /** transactions dropped because more than maxTransactions came within the window */
  overflowed = 0
  private held: Held[] = []
  private first = 0

  constructor (private readonly settings: StandbySettings, private readonly database: string, private readonly log: FastifyBaseLogger, private readonly now: () => number = Date.now) {}

  get size (): number {
    return this.held.length - this.first
  }

  push (row: RowChange): void {
    const txid = String(row.x)
    const last = this.size > 0 ? this.held[this.held.length - 1] : undefined
    if (last?.txid === txid) last.rows.push(row)
    else this.add(txid, [row])
  }

  /** A mark, in its place among the transactions. */
  mark (mark: string): void {
    this.add(mark, [])
  }

  private add (txid: string, rows: RowChange[]): void {
    const now = this.now()
    this.held.push({ txid, at: now, rows })
    this.trim(now)
  }

  /** Drops what is older than the window (keeping the newest) and what exceeds the count. */
  private trim (now: number): void {
    const end = this.held.length - 1
    while (this.first < end && this.held[this.first].at <= now - this.settings.windowMs) this.first++
    const over = this.size - this.settings.maxTransactions
    if (over > 0) {
      if (this.overflowed === 0) this.log.warn({ database: this.database, maxTransactions: this.settings.maxTransactions }, 'changefeed: standby buffer full; its oldest transactions dropped (a takeover past them is a gap; see stats().listeners)')
      this.overflowed += over
      this.first += over
    }
    if (this.first > 1024 && this.first * 2 > this.held.length) {
      this.held = this.held.slice(this.first)
      this.first = 0
    }
  }

  /** The transactions after `txid`, oldest first; null when `txid` is not held (what came before cannot be shown). */
  after (txid: string): RowChange[][] | null {
    for (let i = this.held.length - 1; i >= this.first; i--) {
      if (this.held[i].txid === txid) return this.held.slice(i + 1).map((h) => h.rows)
    }
    return null
  }

  clear (): void {
    this.held = []
    this.first = 0
  }
}

/** A follower's standby: listening on its own connection, buffering, and the takeover. */
export class Standby {
  /** true while this follower's connection listens (since when its buffer is complete) */
  listening = false
  /** takeovers without a gap, and those that could not show it */
  handoffs = { gapless: 0, gap: 0 }
  readonly buffer: StandbyBuffer

  constructor (settings: StandbySettings, private readonly database: string, private readonly record: HandoffRecord, private readonly log: FastifyBaseLogger, now?: () => number) {
    this.buffer = new StandbyBuffer(settings, database, log, now)
  }

  /** Listening started on a new connection: the buffer is complete from now on. Returns the mark to send. */
  start (): string {
    this.buffer.clear()
    this.listening = true
    return 'standby:' + randomUUID()
  }

  stop (): void {
    this.listening = false
    this.buffer.clear()
  }

  /**
   * This follower now holds the lock: hands `publish` the buffered transactions the old leader had not, oldest
   * first, and resolves true; false when it cannot show that nothing is missing (then nothing is handed on).
   */
  async takeOver (publish: (transactions: RowChange[][]) => void): Promise<boolean> {
    let last: string | null
    try {
      last = await this.record.read(this.database)
    } catch (err) {
      this.log.warn({ database: this.database, err: (err as Error).message }, 'changefeed: the last published transaction could not be read; taking over with a resync')
      last = null
    }
    // read while NOTIFYs kept coming into the buffer: taken from it at once, before any is handled as the leader's
    const missed = this.listening && last !== null ? this.buffer.after(last) : null
    this.stop()
    if (missed === null) {
      this.handoffs.gap++
      return false
    }
    this.handoffs.gapless++
    this.log.info({ database: this.database, after: last, transactions: missed.length }, 'changefeed: took over listening without a gap; publishing what the previous leader had not')
    publish(missed)
    return true
  }
}

/** How long a closing leader waits for its last transactions to be handed on and recorded. */
const SETTLE_MS = 5000

/**
 * The leader's side: transactions handed on in the order they came; each is recorded once it and every one before it
 * has been routed (published, unwatched, or given up on with a resync owed). One write at a time, of the latest.
 */
export class HandledLog {
  /** record writes that failed (a takeover then republishes more, or is a gap) */
  failures = 0
  /** record writes */
  recorded = 0
  private tail: Promise<void> = Promise.resolve()
  private open: { txid: string, routes: Array<unknown> } | null = null
  private latest: string | null = null
  private writing: Promise<void> | null = null
  /** counts depositions: what was tracked before one is not recorded */
  private generation = 0

  constructor (private readonly database: string, private readonly record: HandoffRecord, private readonly log: FastifyBaseLogger) {}

  /** A change of transaction `txid` handed to the router; `route` settles once it is routed. */
  track (txid: string, route: unknown): void {
    if (this.open?.txid !== txid) this.close()
    this.open ??= { txid, routes: [] }
    this.open.routes.push(route)
    if (this.open.routes.length === 1) queueMicrotask(() => this.close())
  }

  /** A follower's mark: recorded once everything before it is (the changes before it were tracked first). */
  mark (mark: string): void {
    this.track(mark, undefined)
    this.close()
  }

  /** The changes of the open transaction are all tracked (the coalescer emits a transaction's changes at once). */
  private close (): void {
    const open = this.open
    if (open === null) return
    this.open = null
    const generation = this.generation
    this.tail = this.tail.then(async () => { await Promise.allSettled(open.routes) }).then(() => { if (generation === this.generation) this.handled(open.txid) })
  }

  /**
   * This instance no longer leads (its connection went): what it still routes is not recorded, since the new leader
   * may have read the record already and be recording its own.
   */
  deposed (): void {
    this.generation++
    this.open = null
    this.latest = null
  }

  private handled (txid: string): void {
    this.latest = txid
    this.writing ??= this.write()
  }

  private async write (): Promise<void> {
    while (this.latest !== null) {
      const txid = this.latest
      this.latest = null
      try {
        await this.record.write(this.database, txid)
        this.recorded++
      } catch (err) {
        if (this.failures++ === 0) this.log.warn({ database: this.database, err: (err as Error).message }, 'changefeed: recording the last published transaction failed (logged once); a takeover may resync')
      }
    }
    this.writing = null
  }

  /** Resolves once every tracked transaction is handed on and recorded (or after SETTLE_MS). */
  async settled (): Promise<void> {
    this.close()
    let timer: NodeJS.Timeout | undefined
    const done = this.tail.then(async () => { while (this.writing !== null) await this.writing })
    await Promise.race([done, new Promise<void>((resolve) => { timer = setTimeout(resolve, SETTLE_MS) })])
    clearTimeout(timer)
  }
}
