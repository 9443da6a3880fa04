/**
 * A TRUNCATE empties a table without a row trigger firing: its statement trigger reports it as one change
 * (sql/changefeed.sql), and this says whose watchers must refetch. The table of a type: the type's watchers (feeds
 * included) — of the tenant a truncated partition holds (a partition of a list partitioning by tenant_id, at any
 * level: its values), of the database's tenant (database per tenant), or of every tenant. The event store's tables:
 * the watchers of every type it feeds.
 */
import type { Change } from '../capture/coalesce.js'
import { quoteIdent, type Database } from '../capture/database.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import type { EventStoreOf } from '../capture/tables.js'

/** Whose watchers a truncation concerns: types by name, of these tenants (and every tenant's) or, null, of all. */
export interface TruncationTargets { types: string[], tenants: string[] | null }

/** The values of a list partition's bound (`FOR VALUES IN ('red', 'o''neil')`); null for a default partition. */
export function listBoundValues (bound: string): string[] | null {
  const list = /^FOR VALUES IN \((.*)\)$/s.exec(bound.trim())
  if (list === null) return null
  return [...list[1].matchAll(/'((?:[^']|'')*)'/g)].map((m) => m[1].replaceAll("''", "'"))
}

export class Truncations {
  constructor (
    private readonly registry: EntityRegistry,
    private readonly databases: ReadonlyMap<string, Database>,
    private readonly eventStore: EventStoreOf
  ) {}

  /** Whose watchers a truncation concerns; null: nobody's (no type is fed by the table). Never rejects. */
  async targetsOf (change: Change): Promise<TruncationTargets | null> {
    const store = this.eventStore(change.database)
    const fromStore = store !== null && store.schema === change.schema && (store.table === change.table || store.streams === change.table)
    const entity = this.registry.forTable(change.database, change.schema, change.table)
    const types: EntityType[] = fromStore ? this.registry.aggregatesIn(change.database) : entity === undefined ? [] : [entity]
    if (types.length === 0) return null
    const own = this.registry.tenantOfDatabase(change.database)
    return { types: types.map((e) => e.name), tenants: own !== null ? [own] : await this.tenantsOf(change) }
  }

  /**
   * The tenants whose rows a truncated partition held; null (every tenant) for the table itself, a default partition,
   * a partitioning by something else, or a partition gone by now.
   */
  private async tenantsOf (change: Change): Promise<string[] | null> {
    const part = change.truncated
    const db = this.databases.get(change.database)
    if (part === undefined || db === undefined || (part.schema === change.schema && part.table === change.table)) return null
    try {
      const rows = await db.query<{ bound: string }>(
        `SELECT pg_get_expr(c.relpartbound, c.oid) AS bound
         FROM pg_partition_ancestors(to_regclass($1)) a JOIN pg_class c ON c.oid = a.relid::oid JOIN pg_inherits i ON i.inhrelid = c.oid
         WHERE pg_get_partkeydef(i.inhparent) = 'LIST (tenant_id)'`, [`${quoteIdent(part.schema)}.${quoteIdent(part.table)}`])
      return rows.length === 1 ? listBoundValues(rows[0].bound) : null
    } catch {
      return null
    }
  }
}
