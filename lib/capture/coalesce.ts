/**
 * Coalescing: one change per entity per transaction. PostgreSQL delivers a transaction's NOTIFYs together, at
 * commit, in order, and never interleaves two transactions' NOTIFYs; so a group ends when the transaction id
 * changes, or when the socket read that brought it is done (setImmediate runs after the I/O phase that parsed
 * the whole chunk). A transaction whose NOTIFYs span several reads may come out as two groups: each still
 * describes the entity truthfully (created then updated), just not in one message.
 */

import { notifyPosition, type ChangeType } from '../protocol/wire.js'

export type { ChangeType }

/** insert, update, delete; an event appended; a stream archived; a table (or one of its partitions) truncated */
export type RowOp = 'I' | 'U' | 'D' | 'A' | 'R' | 'T'

/** An event appended to a stream (event sources): its data when it rode inline. */
export interface AppendedEvent {
  type: string
  version: number
  data?: unknown
}

/** One row change as the trigger reports it (sql/changefeed.sql). */
export interface RowChange {
  s: string
  t: string
  id: string
  op: RowOp
  x: number | string
  v?: string | null
  ts: number
  o?: string | null
  /** the row's tenant_id, for tables that have one */
  tn?: string | null
  d?: unknown
  /** event sources: the stream's type (mt_streams.type) and the event */
  st?: string | null
  e?: AppendedEvent
  /** outbox mode: the row's position, given by the publishing listener */
  p?: string
  /** a TRUNCATE: the relation truncated (the table, or one of its partitions) */
  ps?: string
  pt?: string
}

/** One entity's net change in one transaction. */
export interface Change {
  database: string
  schema: string
  table: string
  id: string
  /** the row's tenant (tenant_id column), or its database's (database per tenant); null without tenancy */
  tenantId: string | null
  changeType: ChangeType
  txid: string
  /**
   * Where the change stands in its database's change log, carried by the notification so a client can resume.
   * Outbox mode: `<epoch>:<number>` (the position of the transaction's last row for the entity), resumable with
   * `since`. Notify mode: `n:<txid>` (`n:<txid>:events` for the events appended to a stream), only for telling
   * changes apart.
   */
  position: string
  version: string | null
  /** trigger time of the last row change, epoch ms */
  ts: number
  origin: string | null
  /** the document when the trigger inlined it (full tables, small documents) */
  doc?: unknown
  hasDoc: boolean
  /** a host's publish, not a captured change: its document is the one given (none: `minimal`), never read */
  published?: true
  /** published by a new leader for the old one, which may have published it already (lib/capture/standby.ts) */
  handoff?: true
  /** event sources: the stream's type and the events appended in the transaction, in version order */
  streamType?: string | null
  events?: AppendedEvent[]
  /**
   * a TRUNCATE of the table (`changeType` is `deleted`, `id` empty): every entity of it is gone, or every entity of
   * the tenant whose partition this relation is (lib/route/truncations.ts)
   */
  truncated?: { schema: string, table: string }
}

interface Pending { first: RowOp, last: RowChange, events?: AppendedEvent[] }

const DOCUMENT_OPS = new Set(['I', 'U', 'D'])

/** Net effect of a row's first and last operation in one transaction. */
export function netChange (first: 'I' | 'U' | 'D', last: 'I' | 'U' | 'D'): ChangeType | null {
  const existedBefore = first !== 'I'
  const existsAfter = last !== 'D'
  if (existedBefore && existsAfter) return 'updated'
  if (existsAfter) return 'created'
  if (existedBefore) return 'deleted'
  return null
}

export function isRowChange (value: unknown): value is RowChange {
  if (value === null || typeof value !== 'object') return false
  const v = value as Record<string, unknown>
  return typeof v.s === 'string' && typeof v.t === 'string' && typeof v.id === 'string' &&
    (DOCUMENT_OPS.has(v.op as string) || v.op === 'A' || v.op === 'R' || v.op === 'T') && (typeof v.x === 'number' || typeof v.x === 'string') &&
    (v.tn === undefined || v.tn === null || typeof v.tn === 'string') &&
    typeof v.ts === 'number' && (v.op !== 'A' || (typeof v.e === 'object' && v.e !== null))
}

export class TransactionCoalescer {
  private txid: string | null = null
  private readonly pending = new Map<string, Pending>()
  private scheduled = false

  /** `tenant`: the database's tenant (database per tenant), for rows that carry none */
  constructor (private readonly database: string, private readonly tenant: string | null, private readonly emit: (change: Change) => void) {}

  push (row: RowChange): void {
    const txid = String(row.x)
    if (this.txid !== null && txid !== this.txid) this.flush()
    this.txid = txid
    // a TRUNCATE of the table and of each of its partitions are several changes
    const id = row.op === 'T' ? '\u0001' + (row.ps ?? '') + '.' + (row.pt ?? '') : row.id
    const key = row.s + '.' + row.t + '\u0000' + (row.tn ?? '') + '\u0000' + id
    let seen = this.pending.get(key)
    if (seen === undefined) {
      seen = { first: row.op, last: row }
      this.pending.set(key, seen)
    } else {
      seen.last = row
    }
    if (row.op === 'A' && row.e !== undefined) (seen.events ??= []).push(row.e)
    if (!this.scheduled) {
      this.scheduled = true
      setImmediate(() => this.flush())
    }
  }

  flush (): void {
    this.scheduled = false
    const txid = this.txid
    if (txid === null) return
    this.txid = null
    const groups = [...this.pending.values()]
    this.pending.clear()
    for (const { first, last, events } of groups) {
      const position = last.p ?? notifyPosition(txid)
      const tenantId = last.tn ?? this.tenant
      if (events !== undefined) {
        this.emit({
          database: this.database,
          schema: last.s,
          table: last.t,
          id: last.id,
          tenantId,
          changeType: 'appended',
          txid,
          // a Marten inline projection writes the aggregate's document in the same transaction: in notify mode the
          // document's change is `n:<txid>`, and a position names one notification
          position: last.p ?? notifyPosition(txid, { events: true }),
          version: String(Math.max(...events.map((e) => e.version))),
          ts: last.ts,
          origin: last.o ?? null,
          hasDoc: false,
          streamType: last.st ?? null,
          events: events.sort((a, b) => a.version - b.version)
        })
        continue
      }
      // an event table only ever reports 'A' and a stream table 'R', so other rows here are document rows
      const changeType = last.op === 'R' ? 'archived' : last.op === 'T' ? 'deleted' : netChange(first as 'I' | 'U' | 'D', last.op as 'I' | 'U' | 'D')
      if (changeType === null) continue
      const change: Change = {
        database: this.database,
        schema: last.s,
        table: last.t,
        id: last.id,
        tenantId,
        changeType,
        txid,
        position,
        version: last.v ?? null,
        ts: last.ts,
        origin: last.o ?? null,
        doc: last.d,
        hasDoc: last.op !== 'D' && 'd' in last,
        streamType: last.op === 'R' ? last.st ?? null : undefined
      }
      if (last.op === 'T') change.truncated = { schema: last.ps ?? last.s, table: last.pt ?? last.t }
      this.emit(change)
    }
  }
}

/** Coalesces rows already in order (outbox mode: a batch, or one entity's replay) at once. */
export function coalesceRows (database: string, tenant: string | null, rows: Iterable<RowChange>): Change[] {
  const changes: Change[] = []
  const coalescer = new TransactionCoalescer(database, tenant, (change) => changes.push(change))
  for (const row of rows) coalescer.push(row)
  coalescer.flush()
  return changes
}
