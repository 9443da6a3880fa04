/**
 * Reading what a notification carries when the trigger could not inline it: an entity's document (within its
 * tenant: conjoined tables are read by tenant and id, never by id alone), and the data of appended events.
 */
import { quoteIdent, type Database } from './capture/database.js'
import type { Change } from './capture/coalesce.js'
import type { EntityType } from './entities.js'

export class DocumentReader {
  /** documents and event batches read */
  reads = 0

  constructor (private readonly databases: ReadonlyMap<string, Database>) {}

  /** The document of one tenant's entity in `database`; undefined when there is none (deleted meanwhile). */
  async document (entity: EntityType, database: string, tenantId: string | null, id: string): Promise<unknown> {
    const db = this.databases.get(database)
    if (db === undefined) return undefined
    this.reads++
    const byTenant = entity.tenancy === 'conjoined' && tenantId !== null
    const rows = await db.query<{ data: unknown }>(
      `SELECT data FROM ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} WHERE id = $1${byTenant ? ' AND tenant_id = $2' : ''}`,
      byTenant ? [id, tenantId] : [id])
    return rows[0]?.data
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
       WHERE stream_id = $1 AND version = ANY($2::bigint[])${byTenant ? ' AND tenant_id = $3' : ''}`,
      byTenant ? [change.id, missing, change.tenantId] : [change.id, missing])
    const byVersion = new Map(rows.map((r) => [Number(r.version), r.data]))
    for (const e of events) if (!('data' in e)) e.data = byVersion.get(e.version) ?? null
  }
}
