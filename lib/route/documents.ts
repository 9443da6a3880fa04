/**
 * Reading what a notification carries when the trigger could not inline it: an entity's document (within its
 * tenant: conjoined tables are read by tenant and id, never by id alone, and as the tenant where row-level security
 * asks), and the data of appended events.
 */
import { quoteIdent, readAs, type Database } from '../capture/database.js'
import type { Change } from '../capture/coalesce.js'
import type { EntityRegistry, EntityType } from '../entities.js'

/**
 * The transaction that wrote the version of row `t` read in snapshot `s.sn`: its `xmin` (32 bits, wraps) as the
 * 64-bit id the trigger reports (`txid_current()`), relative to the snapshot's xmax.
 */
export const FULL_XMIN = `((pg_snapshot_xmax(s.sn)::text::bigint >> 32) << 32) + t.xmin::text::bigint
  - CASE WHEN t.xmin::text::bigint > (pg_snapshot_xmax(s.sn)::text::bigint & 4294967295) THEN 4294967296 ELSE 0 END`

/** A document as read back, and the transaction that wrote the version read. */
export interface ReadDocument {
  data: unknown
  txid: string
}

export class DocumentReader {
  /** documents and event batches read */
  reads = 0

  constructor (private readonly databases: ReadonlyMap<string, Database>, private readonly registry: EntityRegistry) {}

  /**
   * The document of one tenant's entity in `database`, and the transaction that wrote it (a later one than the
   * change being routed when the row was written again meanwhile); undefined when there is none (deleted meanwhile).
   */
  async document (entity: EntityType, database: string, tenantId: string | null, id: string): Promise<ReadDocument | undefined> {
    const db = this.databases.get(database)
    if (db === undefined) return undefined
    this.reads++
    const byTenant = entity.tenancy === 'conjoined' && tenantId !== null
    const rows = await readAs<ReadDocument>(db, this.registry.settingOf(database, entity), tenantId,
      `SELECT t.data, (${FULL_XMIN})::text AS txid FROM (SELECT pg_current_snapshot() AS sn) s, ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} t
       WHERE t.id OPERATOR(pg_catalog.=) $1${byTenant ? ' AND t.tenant_id OPERATOR(pg_catalog.=) $2' : ''}`,
      byTenant ? [id, tenantId] : [id])
    return rows[0]
  }

  /** Fills in the data of appended events that did not ride inline, from the event table of the change. */
  async events (change: Change): Promise<void> {
    const events = change.events ?? []
    const missing = events.filter((e) => !('data' in e)).map((e) => e.version)
    const db = this.databases.get(change.database)
    if (missing.length === 0 || db === undefined) return
    this.reads++
    // a stream id is unique per tenant (conjoined event store): the row's tenant_id names it
    const byTenant = change.tenantId !== null
    const rows = await db.query<{ version: string, data: unknown }>(
      `SELECT version::text AS version, data FROM ${quoteIdent(change.schema)}.${quoteIdent(change.table)}
       WHERE stream_id OPERATOR(pg_catalog.=) $1 AND version = ANY($2::bigint[])${byTenant ? ' AND tenant_id OPERATOR(pg_catalog.=) $3' : ''}`,
      byTenant ? [change.id, missing, change.tenantId] : [change.id, missing])
    const byVersion = new Map(rows.map((r) => [Number(r.version), r.data]))
    for (const e of events) if (!('data' in e)) e.data = byVersion.get(e.version) ?? null
  }
}
