/**
 * The outbox of one database (sql/changefeed.sql): numbering committed rows, reading them after the published
 * cursor, recording the cursor, pruning, and reading one entity's changes for a `since` replay.
 *
 * Why numbering happens here and not in the trigger: a sequence value is taken when a row is written, not when
 * its transaction commits, so a reader going by sequence would skip a row whose transaction commits late. The
 * leader instead numbers the rows that are committed now. Per entity that is commit order: a second writer of
 * the same row waits for the first to commit, so the first's rows are visible, and have lower ids, by the time
 * the second's are. Within a batch, transactions go in the order of their last row id and keep their rows
 * together, which keeps that property and lets a transaction's rows be coalesced.
 */
import type { RowChange } from './coalesce.js'
import { formatPosition, parsePosition } from '../protocol/wire.js'

type Query = <R = Record<string, unknown>>(text: string, params?: unknown[]) => Promise<R[]>

export interface OutboxState {
  epoch: string
  /** last position given */
  assigned: number
  /** last position published */
  published: number
  /** positions up to this one are pruned */
  pruned: number
}

interface Row { pos: string, change: RowChange }

function withPosition (epoch: string, rows: Row[]): RowChange[] {
  return rows.map(({ pos, change }) => ({ ...change, p: formatPosition(epoch, pos) }))
}

export class Outbox {
  constructor (readonly channel: string) {}

  async state (query: Query): Promise<OutboxState> {
    await query('SELECT changefeed_outbox_init($1::text)', [this.channel])
    const [row] = await query<{ epoch: string, assigned: string, published: string, pruned: string }>(
      'SELECT epoch, assigned, published, pruned FROM changefeed_outbox_state WHERE channel = $1', [this.channel])
    return { epoch: row.epoch, assigned: Number(row.assigned), published: Number(row.published), pruned: Number(row.pruned) }
  }

  /** Numbers up to `limit` committed rows (leader only). Returns how many. */
  async number (query: Query, limit: number): Promise<number> {
    const rows = await query<{ n: string }>(`
      WITH batch AS MATERIALIZED (
        SELECT id, max(id) OVER (PARTITION BY x) AS last
        FROM (SELECT id, x FROM changefeed_outbox WHERE channel = $1 AND pos IS NULL ORDER BY id LIMIT $2) b
      ), ordered AS (
        SELECT id, row_number() OVER (ORDER BY last, id) AS n FROM batch
      ), state AS (
        UPDATE changefeed_outbox_state SET assigned = assigned + (SELECT count(*) FROM batch)
        WHERE channel = $1 AND EXISTS (SELECT 1 FROM batch)
        RETURNING assigned - (SELECT count(*) FROM batch) AS base
      )
      UPDATE changefeed_outbox o SET pos = state.base + ordered.n, numbered_at = clock_timestamp()
      FROM ordered, state WHERE o.id = ordered.id
      RETURNING ordered.n`, [this.channel, limit])
    return rows.length
  }

  /** Numbered rows after `after`, in position order. */
  async read (query: Query, epoch: string, after: number, limit: number): Promise<{ rows: RowChange[], last: number }> {
    const rows = await query<Row>(
      // ORDER BY the column, not the text alias: "100" sorts before "99"
      'SELECT o.pos::text AS pos, o.change FROM changefeed_outbox o WHERE o.channel = $1 AND o.pos > $2 ORDER BY o.pos LIMIT $3',
      [this.channel, after, limit])
    return { rows: withPosition(epoch, rows), last: rows.length === 0 ? after : Number(rows[rows.length - 1].pos) }
  }

  async markPublished (query: Query, pos: number): Promise<void> {
    await query('UPDATE changefeed_outbox_state SET published = $2 WHERE channel = $1 AND published < $2', [this.channel, pos])
  }

  /**
   * Deletes published rows older than `maxAgeSeconds` or beyond the newest `maxRows`, and records how far, so a
   * `since` older than that is answered `recovered: false`. Returns how many rows went.
   */
  async prune (query: Query, maxAgeSeconds: number, maxRows: number): Promise<number> {
    const rows = await query<{ n: string }>(`
      WITH state AS (SELECT published, assigned FROM changefeed_outbox_state WHERE channel = $1),
      gone AS (
        DELETE FROM changefeed_outbox o USING state
        WHERE o.channel = $1 AND o.pos IS NOT NULL AND o.pos <= state.published
          AND (o.numbered_at < now() - make_interval(secs => $2::float8) OR o.pos <= state.assigned - $3)
        RETURNING o.pos
      )
      UPDATE changefeed_outbox_state s SET pruned = greatest(s.pruned, (SELECT max(pos) FROM gone))
      WHERE s.channel = $1 AND EXISTS (SELECT 1 FROM gone)
      RETURNING (SELECT count(*) FROM gone)::text AS n`, [this.channel, maxAgeSeconds, maxRows])
    return rows.length === 0 ? 0 : Number(rows[0].n)
  }

  /**
   * One entity's changes after `since` (one tenant's, when `tenantId` is given), and the TRUNCATEs of its tables,
   * read in one snapshot with the state that says whether they are all still there. null: not recoverable (another
   * epoch, pruned, from the future, or more than `limit`).
   */
  async replay (query: Query, request: { tables: string[], entityId: string, tenantId: string | null, since: string, limit: number }): Promise<RowChange[] | null> {
    const position = parsePosition(request.since)
    if (position === null) return null
    const rows = await query<{ epoch: string, pruned: string, assigned: string, pos: string | null, change: RowChange | null }>(`
      SELECT s.epoch, s.pruned::text, s.assigned::text, o.p::text AS pos, o.change
      FROM changefeed_outbox_state s
      LEFT JOIN LATERAL (
        SELECT pos AS p, change FROM changefeed_outbox
        WHERE channel = s.channel AND t = ANY($3) AND pos > $4
          AND ((eid = $2 AND ($6::text IS NULL OR tn = $6)) OR (eid = '' AND change->>'op'::text = 'T'))
        ORDER BY pos LIMIT $5
      ) o ON true
      WHERE s.channel = $1
      ORDER BY o.p`, [this.channel, request.entityId, request.tables, position.pos, request.limit + 1, request.tenantId])
    const head = rows[0]
    if (head === undefined || head.epoch !== position.epoch) return null
    if (position.pos < Number(head.pruned) || position.pos > Number(head.assigned)) return null
    const found = rows.filter((r): r is Row & typeof r => r.pos !== null)
    if (found.length > request.limit) return null
    return withPosition(head.epoch, found)
  }
}
