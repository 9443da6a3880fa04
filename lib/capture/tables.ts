/**
 * What capture knows of each database's watched tables, and the scan that keeps it true: installs on (and discovers)
 * the tables of every schema a database's types live in, checks the declared ones, and reads from the catalog what
 * the configuration need not say — a table being rebuilt (Weasel's `_temp` copy: no type), a table dropped (its
 * discovered type goes away), a table made again (its watchers resync unless nothing could be missed), row-level
 * security (read as the tenant), an event store that belongs to tenants.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from './database.js'
import { applyTriggerScript, eventStoreTenanted, watchRegistry, watchTables, type WatchedTable } from './install.js'
import { tenantRegistryOf } from './options.js'
import { carriesDocument, type EntityRegistry, type EntityType } from '../entities.js'
import type { ResolvedOptions } from '../options.js'
import { EntityTableError } from '../errors.js'

/** The event store captured in `database` (schema, tables), or null (events off, or captured in another database). */
export function eventStoreOf (capture: ResolvedOptions['capture'], database: string, schema: string): { schema: string, table: string, streams: string } | null {
  const { events } = capture
  if (!events.enabled || (events.database !== undefined && events.database !== database)) return null
  return { schema: events.schema ?? schema, table: events.table, streams: events.streams }
}

/** A database's event store: only its tables may report event appends and archived streams. */
export type EventStoreOf = (database: string) => ReturnType<typeof eventStoreOf>

/** What a scan finds that the watchers of a database must hear. */
export interface ScanEvents {
  /** roles that write watched tables could not announce their changes until now: every watcher refetches */
  onUnannounced(database: string): void
  /** the watchers of these types (of this database) may have missed changes: their table was made again */
  onTypes(database: string, entityTypes: string[], reason: 'rebuilt'): void
}

export class WatchedTables {
  /** tables the trigger could not be put on ("database.schema.table" → why): their changes are not captured */
  readonly untriggered = new Map<string, string>()
  /** databases whose event store (or table of tenant databases) was looked for and not found (said once) */
  private readonly notThere = new Set<string>()
  /** declared tables found missing (warned once each) */
  private readonly missing = new Set<string>()
  /** whether a declared table found missing is worth a warning: from the host's ready on */
  judging = false
  /** "database.schema.table" → the oid it had when last seen: a new one means it was made again */
  private readonly oids = new Map<string, string>()
  /**
   * rebuilds ended since a scan last saw a new table of the name: the oid of the table made, when the trigger was put
   * on in the transaction that made it (nothing was missed: no resync); null when one was not, which no later mark
   * excuses. A mark is for the table it names, so it is never taken for a later table, even when no scan saw that one
   */
  private readonly fresh = new Map<string, string | null>()
  /** what was said of a table's row-level security ("database.schema.table" → the setting, or '' when bypassed) */
  private readonly security = new Map<string, string>()

  constructor (
    private readonly registry: EntityRegistry,
    private readonly options: ResolvedOptions,
    private readonly log: FastifyBaseLogger,
    private readonly events: ScanEvents
  ) {}

  /** The schemas watched in a database: its own, and every schema its declared types name. */
  private schemasOf (database: string): Set<string> {
    const schemas = new Set([this.registry.schemaOf(database)])
    for (const entity of this.registry.declaredIn(database)) schemas.add(entity.schema)
    return schemas
  }

  /** The trigger SQL, then a strict scan: what a database needs before its listener starts. */
  async prepare (db: Database, { strict }: { strict: boolean }): Promise<void> {
    if (this.options.capture.installTriggers) await applyTriggerScript(db)
    await this.scan(db, { strict })
  }

  /**
   * Installs on new matching tables, registers the undeclared ones, and checks the declared ones; installs the
   * event store's triggers when asked. At start (`strict`) a declared `full` type whose table has no `data` column
   * stops the server; later it is logged.
   */
  async scan (db: Database, { strict = false }: { strict?: boolean } = {}): Promise<void> {
    const { capture } = this.options
    const install = capture.installTriggers
    const store = eventStoreOf(capture, db.name, this.registry.schemaOf(db.name))
    let granted = 0
    if (install && store !== null) {
      const [row] = await db.query<{ granted: number | null }>('SELECT changefeed_watch_events($1::text, $2::text, $3::text, $4::text, $5::boolean) AS granted', [store.schema, store.table, store.streams, capture.channel, capture.mode === 'outbox'])
      granted += this.found(db.name, 'events', row?.granted ?? null, { schema: store.schema, table: store.table })
    }
    const configured = this.options.databases.find((d) => d.name === db.name)
    const registry = configured === undefined ? null : tenantRegistryOf(configured, this.registry.schemaOf(db.name))
    // its writers' right to announce matters to no watcher: a change of it only makes the server read it again
    if (install && registry !== null) this.found(db.name, 'registry', await watchRegistry(db, registry, capture.channel), registry)
    const declared = this.registry.declaredIn(db.name)
    const found = new Map<string, WatchedTable>()
    const rebuilding = new Set<string>()
    for (const schema of this.schemasOf(db.name)) {
      const tables = await watchTables(db, {
        schema,
        patterns: capture.tables,
        tables: declared.filter((e) => e.schema === schema).map((e) => e.table),
        channel: capture.channel,
        inlineTables: this.registry.inlineTables(db.name, schema),
        outbox: capture.mode === 'outbox',
        install
      })
      for (const table of tables) {
        if (table.copy) {
          rebuilding.add(schema + '.' + table.table.slice(0, -'_temp'.length))
          continue
        }
        found.set(schema + '.' + table.table, table)
        granted += table.granted
        this.checkTable(db, table, strict)
      }
    }
    if (rebuilding.size > 0) this.log.debug({ database: db.name, tables: [...rebuilding] }, 'changefeed: tables being rebuilt: their copies are no types, their types stay')
    const there = (e: EntityType): boolean => found.has(e.schema + '.' + e.table) || rebuilding.has(e.schema + '.' + e.table)
    this.forgetDropped(db.name, there)
    if (store !== null && !this.notThere.has(db.name + '\u0000events')) {
      this.registry.eventStoreFound(db.name, { tenanted: await eventStoreTenanted(db, store), tableless: declared.filter((e) => !there(e)) })
    }
    // a role that may write a watched table lacked the right to announce its changes until now: what it wrote
    // meanwhile reached nobody, so the database's watchers refetch
    if (granted > 0 && !strict) {
      this.log.warn({ database: db.name, roles: granted }, 'changefeed: roles that write watched tables were given the right to announce changes; watchers resync')
      this.events.onUnannounced(db.name)
    }
    // judged once the host is ready: it may create the tables after registering the plugin
    if (this.judging) this.judgeMissing(db.name, declared.filter((e) => !there(e)))
  }

  /** An object looked for (the event store, the table of tenant databases): the roles granted, or 0 (said once) when not there. */
  private found (database: string, what: 'events' | 'registry', granted: number | null, where: { schema: string, table: string }): number {
    const key = database + '\u0000' + what
    if (granted !== null) {
      this.notThere.delete(key)
      return granted
    }
    if (!this.notThere.has(key)) this.log.info({ database, ...where }, `changefeed: no ${what === 'events' ? 'event store' : 'table of tenant databases'} yet; looking again at the next scan`)
    this.notThere.add(key)
    return 0
  }

  private judgeMissing (database: string, absent: EntityType[]): void {
    const { events } = this.options.capture
    const aggregates = events.enabled ? new Set(Object.values(events.types)) : new Set<string>()
    for (const entity of absent) {
      const where = `${database}.${entity.schema}.${entity.table}`
      if (this.missing.has(where) || aggregates.has(entity.name)) continue
      this.missing.add(where)
      this.log.warn({ database, schema: entity.schema, table: entity.table, entityType: entity.name },
        'changefeed: the table of a declared entity type does not exist (yet); its changes are captured once it does')
    }
  }

  /** Discovered types whose table is gone (and not being rebuilt) go away; declared types stay (judgeMissing). */
  private forgetDropped (database: string, there: (e: EntityType) => boolean): void {
    for (const entity of this.registry.all()) {
      if (entity.declared || !entity.databases.includes(database) || there(entity)) continue
      this.registry.forget(database, entity)
      this.log.info({ database, schema: entity.schema, table: entity.table, entityType: entity.name }, 'changefeed: the table of a discovered entity type was dropped; the type is gone')
    }
  }

  private checkTable (db: Database, found: WatchedTable, strict: boolean): void {
    const { schema, table } = found
    const where = `${db.name}.${schema}.${table}`
    if (found.error !== null) {
      if (this.untriggered.get(where) !== found.error) {
        this.log.warn({ database: db.name, schema, table, err: found.error }, 'changefeed: no capture trigger on a watched table; its changes are not captured')
      }
      this.untriggered.set(where, found.error)
    } else {
      this.untriggered.delete(where)
    }
    this.rowSecurity(db.name, found)
    let entity = this.registry.forTable(db.name, schema, table)
    if (entity === undefined) {
      entity = this.registry.discover(db.name, schema, table, found.dotnetType, found.tenantColumn)
      if (entity !== undefined) this.log.debug({ database: db.name, schema, table, entityType: entity.name }, 'changefeed: discovered entity type')
    } else if (entity.declared) {
      this.missing.delete(where)
      if (this.registry.tableFound(entity, { tenantColumn: found.tenantColumn })) {
        this.log.warn({ database: db.name, schema, table, entityType: entity.name }, 'changefeed: a type taken for an aggregate of an event store of tenants has a table without tenant_id: it is not tenanted')
      }
      if (carriesDocument(entity) && !found.dataColumn) {
        const err = new EntityTableError(entity.name, `payload "${entity.payload}" needs a data column, and ${schema}.${table} has none`)
        if (strict) throw err
        this.log.error({ err }, 'changefeed: an entity type cannot be delivered in full')
      }
    }
    this.recreated(db.name, found, entity)
  }

  /**
   * A table made again (dropped and created: Weasel's rebuild does it) lost its trigger in between: what was written
   * then reached nobody, unless the trigger was put on in the transaction that made it (a rebuild run in one
   * transaction, which changes nothing). Its type's watchers resync.
   */
  private recreated (database: string, found: WatchedTable, entity: EntityType | undefined): void {
    // a table made again is judged once its trigger is on (not while its rebuild goes on)
    if (!found.triggered) return
    const where = `${database}.${found.schema}.${found.table}`
    const before = this.oids.get(where)
    this.oids.set(where, found.oid)
    // spent on the first new table seen (the one marked or a later one)
    const fresh = this.fresh.get(where) === found.oid
    if (before !== found.oid) this.fresh.delete(where)
    if (before === undefined || before === found.oid || fresh || entity === undefined || found.error !== null) return
    this.log.info({ database, schema: found.schema, table: found.table, entityType: entity.name }, 'changefeed: a watched table was made again; its watchers resync')
    this.events.onTypes(database, [entity.name], 'rebuilt')
  }

  /**
   * A rebuild ended (sql/changefeed.sql, changefeed_on_drop): `fresh`, the oid of the table made when the trigger was
   * put on in the transaction that made it, else null (a note without the oid, from an earlier script, too).
   */
  rebuilt (database: string, schema: string, table: string, fresh: string | null): void {
    const where = `${database}.${schema}.${table}`
    if (fresh === null || this.fresh.get(where) !== null) this.fresh.set(where, fresh)
  }

  /** Row-level security on a watched table: its reads set the tenant where it applies; said once per table and state. */
  private rowSecurity (database: string, found: WatchedTable): void {
    const { rowSecurity, schema, table } = found
    const setting = rowSecurity === null || !rowSecurity.applies ? null : rowSecurity.setting ?? this.options.capture.tenantSetting
    this.registry.readAs(database, schema, table, setting)
    const said = this.security.get(`${database}.${schema}.${table}`)
    if (rowSecurity === null || said === (setting ?? '')) return
    this.security.set(`${database}.${schema}.${table}`, setting ?? '')
    if (setting === null) {
      this.log.info({ database, schema, table }, 'changefeed: row-level security on a watched table; this role bypasses it (a superuser, BYPASSRLS, or the owner of a table that does not force it) and reads it as it is')
    } else {
      this.log.info({ database, schema, table, setting, fromPolicy: rowSecurity.setting !== null },
        'changefeed: row-level security on a watched table; its documents, snapshots, filters and owners are read as each entity\'s tenant, with the setting set to it')
    }
  }

  /** A database gone (a tenant's, removed from the registry): what was known of it. */
  forgetDatabase (database: string): void {
    for (const state of [this.untriggered, this.oids, this.security, this.fresh]) {
      for (const key of state.keys()) if (key.startsWith(database + '.')) state.delete(key)
    }
    for (const key of this.missing) if (key.startsWith(database + '.')) this.missing.delete(key)
    for (const key of this.notThere) if (key.startsWith(database + '\u0000')) this.notThere.delete(key)
  }
}
