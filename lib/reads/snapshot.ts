/**
 * Snapshots: an entity's current state (or a filter's matching entities), read in one statement together with the
 * database snapshot it was read in. A notification whose transaction that snapshot already saw is in the state
 * read, and is dropped for the subscriber (`Visibility`); every later one is delivered. Because the subscription
 * is watched before the read, no change can fall between the two: none lost, none twice.
 *
 * The position given with a state is that of the change that last wrote the row: `n:<transaction>` in notify mode,
 * the outbox position in outbox mode (when numbered already). A `delta` type's next patch may apply to it.
 */
import { quoteIdent, readAs, type Database } from '../capture/database.js'
import { FULL_XMIN } from '../route/documents.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import { carriesDocument } from '../entities.js'
import type { ReplaySource, ReplaySources } from './replay.js'
import { formatPosition, notifyPosition, type Condition, type EntitySnapshotData } from '../protocol/index.js'
import { Visibility } from '../capture/visibility.js'

export { Visibility }

/** One entity's state as a snapshot read it. */
export interface SnapshotEntity {
  entityId: string
  tenantId: string | null
  snapshot: EntitySnapshotData
}

export interface SnapshotResult {
  /** null: the type has no table to read (its changes come from a host's publish): there is no state to give */
  visibility: Visibility | null
  entities: SnapshotEntity[]
}

/** Why a snapshot cannot be read; the subscriber hears it as a `bad_request`. */
export class SnapshotUnavailable extends Error {}

interface Row {
  snap: string
  id: string | null
  tenant: string | null
  data?: unknown
  version: string | null
  fx: string | null
  pos: string | null
  epoch: string | null
}

interface Columns { version: boolean, deleted: boolean, tenant: boolean }

/** Outbox mode: the columns of the row's last numbered change (its position) and the outbox's epoch. */
function outboxPosition (source: ReplaySource, entity: EntityType, params: unknown[]): string {
  params.push(source.outbox.channel, entity.table)
  const [channel, table] = [params.length - 1, params.length]
  return `(SELECT o.pos::text FROM changefeed_outbox o WHERE o.channel = $${channel} AND o.t = $${table} AND o.eid = t.id::text
      AND o.x = ${FULL_XMIN} AND o.pos IS NOT NULL ORDER BY o.pos DESC LIMIT 1) AS pos,
    (SELECT st.epoch FROM changefeed_outbox_state st WHERE st.channel = $${channel}) AS epoch`
}

export class SnapshotReader {
  /** reads made (telemetry, tests) */
  reads = 0
  private readonly columns = new Map<string, Promise<Columns | null>>()

  constructor (
    private readonly registry: EntityRegistry,
    private readonly databases: ReadonlyMap<string, Database>,
    /** outbox mode: where positions are numbered */
    private readonly sources: ReplaySources
  ) {}

  /** The database a snapshot of (entity, tenant) is read from; SnapshotUnavailable when there is not exactly one. */
  private databaseOf (entity: EntityType, tenantId: string | null): { name: string, db: Database } {
    if (entity.tenancy === 'database' && tenantId === null) throw new SnapshotUnavailable('a snapshot of a type with a database per tenant needs a tenant: name tenantId')
    const name = this.registry.databaseFor(entity, tenantId)
    const db = name === undefined ? undefined : this.databases.get(name)
    if (name === undefined || db === undefined) throw new SnapshotUnavailable(`no database holds ${entity.name}`)
    return { name, db }
  }

  /** The entities' states (of one tenant, or of every tenant's entity with that id). */
  async entities (entity: EntityType, tenantId: string | null, ids: readonly string[]): Promise<SnapshotResult> {
    // every tenant's entity with that id is several entities: which one would the state be?
    if (entity.tenancy !== 'none' && tenantId === null) throw new SnapshotUnavailable(`a snapshot of a tenanted type (${entity.name}) needs a tenant: name tenantId`)
    const byId = (asText: boolean) => (params: unknown[]): string => {
      params.push(asText ? ids.map((id) => id.toLowerCase()) : ids)
      return asText ? `lower(t.id::text) = ANY($${params.length}::text[])` : `t.id OPERATOR(pg_catalog.=) ANY($${params.length})`
    }
    try {
      return await this.read(entity, tenantId, carriesDocument(entity), byId(false))
    } catch (err) {
      // an id the column's type cannot hold (a uuid column asked for "p1", a bigint out of range: data exceptions,
      // class 22) matches nothing; the others are compared as text, as the column prints them (uuids in lower case)
      if ((err as { code?: string }).code?.startsWith('22') !== true) throw err
      return await this.read(entity, tenantId, carriesDocument(entity), byId(true))
    }
  }

  /**
   * The entities that match every condition; SnapshotUnavailable when more than `limit` do. Without `documents`
   * only their ids (a filter's membership).
   */
  async matching (entity: EntityType, tenantId: string | null, conditions: readonly Condition[], documents: boolean, limit: number | null): Promise<{ visibility: Visibility, entities: SnapshotEntity[] }> {
    const result = await this.read(entity, tenantId, documents, (params) => conditions.map(({ parts, values }) => {
      // containment (`@>`) lets a GIN index on data (Marten's jsonb_path_ops) find the rows; it also matches arrays
      // that hold the value, so equality at the path decides
      const contains = values.map((value) => {
        params.push(JSON.stringify(parts.reduceRight<unknown>((inner, key) => ({ [key]: inner }), JSON.parse(value))))
        return `t.data @> $${params.length}::jsonb`
      })
      params.push(parts, values)
      return `(${contains.join(' OR ')}) AND t.data #> $${params.length - 1}::text[] = ANY($${params.length}::jsonb[])`
    }).join(' AND '), limit === null ? undefined : limit + 1)
    if (limit !== null && result.entities.length > limit) throw new SnapshotUnavailable(`the filter matches more than ${limit} entities (limits.maxFilterMatches): narrow it`)
    if (result.visibility === null) throw new SnapshotUnavailable(`${entity.name} has no table to filter`)
    return { visibility: result.visibility, entities: result.entities }
  }

  private async read (entity: EntityType, tenantId: string | null, documents: boolean, where: (params: unknown[]) => string, limit?: number): Promise<SnapshotResult> {
    // no database at all: a type only a host publishes
    if (entity.databases.length === 0) return { visibility: null, entities: [] }
    const { name, db } = this.databaseOf(entity, tenantId)
    const columns = await this.columnsOf(name, db, entity)
    if (columns === null) return { visibility: null, entities: [] }
    // a table under row-level security shows one tenant's rows to a reader that names it, and nothing at all to one
    // that does not
    const setting = this.registry.settingOf(name, entity)
    if (setting !== null && tenantId === null) throw new SnapshotUnavailable(`${entity.name} is read one tenant at a time (row-level security): name tenantId`)
    const params: unknown[] = []
    const conditions = [where(params)]
    if (columns.tenant && tenantId !== null && entity.tenancy === 'conjoined') {
      params.push(tenantId)
      conditions.push(`t.tenant_id OPERATOR(pg_catalog.=) $${params.length}`)
    }
    if (columns.deleted) conditions.push('NOT coalesce(t.mt_deleted, false)')
    const source = this.sources(name)
    const position = source === undefined ? 'NULL::text AS pos, NULL::text AS epoch' : outboxPosition(source, entity, params)
    if (limit !== undefined) params.push(limit)
    const text = `SELECT s.sn::text AS snap, d.* FROM (SELECT pg_current_snapshot() AS sn) s LEFT JOIN LATERAL (
        SELECT t.id::text AS id, ${columns.tenant ? 't.tenant_id::text' : 'NULL::text'} AS tenant,
          ${documents ? 't.data,' : ''} ${columns.version ? 't.mt_version::text' : 'NULL::text'} AS version,
          (${FULL_XMIN})::text AS fx, ${position}
        FROM ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} t
        WHERE ${conditions.join(' AND ')}
        ${limit === undefined ? '' : `LIMIT $${params.length}`}
      ) d ON true`
    this.reads++
    const rows = await readAs<Row>(db, setting, tenantId, text, params)
    const databaseTenant = this.registry.tenantOfDatabase(name)
    const entities: SnapshotEntity[] = []
    for (const row of rows) {
      if (row.id === null) continue
      const snapshot: EntitySnapshotData = { version: row.version }
      if (documents) snapshot.payload = row.data ?? null
      const at = row.pos !== null && row.epoch !== null ? formatPosition(row.epoch, row.pos) : source === undefined && row.fx !== null ? notifyPosition(row.fx) : undefined
      if (at !== undefined) snapshot.position = at
      entities.push({ entityId: row.id, tenantId: row.tenant ?? databaseTenant, snapshot })
    }
    return { visibility: new Visibility(rows[0].snap), entities }
  }

  /** Which of Marten's optional columns the table has (null: no such table). Looked up once per table. */
  private async columnsOf (database: string, db: Database, entity: EntityType): Promise<Columns | null> {
    const key = database + '\u0000' + entity.schema + '\u0000' + entity.table
    let columns = this.columns.get(key)
    if (columns === undefined) {
      columns = db.query<{ name: string }>(
        'SELECT attname::text AS name FROM pg_attribute WHERE attrelid = to_regclass($1)::oid AND attnum > 0 AND NOT attisdropped',
        [quoteIdent(entity.schema) + '.' + quoteIdent(entity.table)]
      ).then((rows) => {
        if (rows.length === 0) return null
        const names = new Set(rows.map((r) => r.name))
        return { version: names.has('mt_version'), deleted: names.has('mt_deleted'), tenant: names.has('tenant_id') }
      })
      // a failed lookup (or a table not created yet) is asked again next time
      columns.then((found) => { if (found === null) this.columns.delete(key) }, () => this.columns.delete(key))
      this.columns.set(key, columns)
    }
    return await columns
  }
}
