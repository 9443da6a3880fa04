/**
 * The entity registry: which table is which entity type, who may watch it, what a notification carries, and how
 * its entities belong to tenants. Declared types come from options; discovery adds the remaining watched tables
 * (Marten `mt_doc_*`), which can be subscribed to only when `discovery.access` gives them an access rule.
 */
import type { AccessKindName, PayloadModeName, ResolvedOptions } from './options.js'
import { tenantRegistryOf } from './capture/options.js'

/**
 * How a type's entities belong to tenants: not at all; by a `tenant_id` column (Marten conjoined tenancy, also
 * partitioned by tenant); or by database (database per tenant: `databases[].tenant`). An entity is then
 * (type, tenant, id).
 */
export type Tenancy = 'none' | 'conjoined' | 'database'

export interface EntityType {
  name: string
  /**
   * the databases its table lives in: one, or one per tenant (database per tenant; with `fedByTenants`, every tenant
   * database, those a tenant registry adds while the server runs included)
   */
  databases: string[]
  fedByTenants?: true
  schema: string
  table: string
  /** null: known (its changes are recognised) but nobody may subscribe */
  access: AccessKindName | null
  payload: PayloadModeName
  ownerPath?: string[]
  /** type-wide subscriptions (entityId "*") allowed */
  feed: boolean
  declared: boolean
  tenancy: Tenancy
  /** what the options say of its tenancy (`entities.<Type>.tenanted`), when they say it */
  tenantedOption?: boolean
}

/** Whether a type's notifications carry its document: `full` and `delta` types. */
export function carriesDocument (entity: EntityType): boolean {
  return entity.payload === 'full' || entity.payload === 'delta'
}

const normalise = (name: string): string => name.toLowerCase().replace(/[^a-z0-9]/g, '')

/** Marten's table name for a document type: mt_doc_ + the lowercased type name. */
export function martenTable (typeName: string): string {
  return 'mt_doc_' + typeName.toLowerCase().replace(/[^a-z0-9_]/g, '_')
}

/**
 * The short type name from Marten's `mt_dotnet_type` ("Sports.Domain.RugbyGameState, Sports.Domain" →
 * "RugbyGameState"; nested "Outer+Inner" → "Inner").
 */
export function dotnetShortName (dotnetType: string): string | null {
  const full = dotnetType.split(',')[0].trim()
  const name = full.split(/[.+]/).pop() ?? ''
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name) ? name : null
}

export class EntityRegistry {
  private readonly byName = new Map<string, EntityType>()
  /** discovered types answer to their name in any letter case: Marten lowercases table names */
  private readonly byLowerName = new Map<string, EntityType>()
  private readonly byTable = new Map<string, EntityType>()
  /** database → its tenant (database per tenant) */
  private readonly tenantOf = new Map<string, string>()
  /** databases whose event store belongs to tenants (Marten conjoined or tenant-partitioned events) */
  private readonly tenantedStores = new Set<string>()
  /** types fed by an event store: named in capture.events, resolved for a stream, or declared without a table */
  private readonly aggregates = new Set<EntityType>()
  /** types tenanted only because they were taken for an aggregate of a tenanted event store (no table yet) */
  private readonly tenantedByStore = new Set<EntityType>()
  /** "database\0schema\0table" → the setting a row-level security policy reads the tenant from */
  private readonly rowSecurity = new Map<string, string>()

  constructor (private readonly options: ResolvedOptions) {
    for (const db of options.databases) if (db.tenant !== undefined) this.tenantOf.set(db.name, db.tenant)
    const onlyDatabase = options.databases.length === 1 ? options.databases[0].name : undefined
    // a type that names no database, where databases belong to tenants: fed by every tenant's database (those a
    // tenant registry adds while running too)
    const byTenants = options.databases.some((db) => tenantRegistryOf(db, '') !== null) || (onlyDatabase === undefined && this.tenantOf.size > 0)
    const { types, untypedAs } = options.capture.events
    for (const [name, e] of Object.entries(options.entities)) {
      const fedByTenants = e.database === undefined && byTenants
      const databases = e.database !== undefined ? [e.database].flat() : fedByTenants ? [...this.tenantOf.keys()] : onlyDatabase === undefined ? [] : [onlyDatabase]
      const byDatabase = fedByTenants || (databases.length > 0 && databases.every((db) => this.tenantOf.has(db)))
      const entity: EntityType = {
        name,
        databases,
        schema: e.schema ?? this.schemaOf(databases[0] ?? options.databases[0]?.name),
        table: e.table ?? martenTable(name),
        access: e.access,
        payload: e.payload ?? 'minimal',
        ownerPath: e.ownerPath,
        feed: e.feed === true,
        declared: true,
        tenancy: byDatabase ? 'database' : e.tenanted === true ? 'conjoined' : 'none'
      }
      if (fedByTenants) entity.fedByTenants = true
      if (e.tenanted !== undefined) entity.tenantedOption = e.tenanted
      this.add(entity)
      if (options.capture.events.enabled && (Object.values(types).includes(name) || untypedAs === name)) this.aggregates.add(entity)
    }
  }

  private static tableKey (database: string, schema: string, table: string): string {
    return database + '\u0000' + schema + '\u0000' + table
  }

  /** The schema a database's tables are watched in. */
  schemaOf (database: string | undefined): string {
    return this.options.databases.find((db) => db.name === database)?.schema ?? this.options.capture.schema
  }

  /** The tenant a database belongs to (database per tenant), or null. */
  tenantOfDatabase (database: string): string | null {
    return this.tenantOf.get(database) ?? null
  }

  /** The database holding one tenant's entities of `entity`: its own for database tenancy, else its only one. */
  databaseFor (entity: EntityType, tenantId: string | null): string | undefined {
    if (entity.tenancy !== 'database') return entity.databases[0]
    return entity.databases.find((db) => this.tenantOf.get(db) === tenantId)
  }

  private add (entity: EntityType): void {
    this.byName.set(entity.name, entity)
    if (!entity.declared) this.byLowerName.set(entity.name.toLowerCase(), entity)
    for (const database of entity.databases) this.byTable.set(EntityRegistry.tableKey(database, entity.schema, entity.table), entity)
  }

  /** A tenant's database found while running (a tenant registry): the types fed by every tenant database get it. */
  addTenantDatabase (database: string, tenant: string): void {
    this.tenantOf.set(database, tenant)
    for (const entity of this.byName.values()) {
      if (entity.fedByTenants !== true || entity.databases.includes(database)) continue
      entity.databases.push(database)
      this.byTable.set(EntityRegistry.tableKey(database, entity.schema, entity.table), entity)
    }
  }

  /** A tenant's database gone: no type is fed by it any more; a discovered type fed by nothing else goes too. */
  removeDatabase (database: string): void {
    this.tenantOf.delete(database)
    this.tenantedStores.delete(database)
    for (const key of this.rowSecurity.keys()) if (key.startsWith(database + '\u0000')) this.rowSecurity.delete(key)
    for (const entity of [...this.byName.values()]) {
      if (entity.declared && entity.databases.includes(database)) this.unbind(database, entity)
      else this.forget(database, entity)
    }
  }

  /**
   * The table of `entity` was dropped in `database`: a discovered type fed by no database any more is no type. A
   * declared type stays (warned about while its table is missing), and is known again when its table is back.
   */
  forget (database: string, entity: EntityType): void {
    this.rowSecurity.delete(EntityRegistry.tableKey(database, entity.schema, entity.table))
    if (entity.declared || !entity.databases.includes(database)) return
    this.unbind(database, entity)
    if (entity.databases.length > 0) return
    this.byName.delete(entity.name)
    this.byLowerName.delete(entity.name.toLowerCase())
    this.aggregates.delete(entity)
  }

  private unbind (database: string, entity: EntityType): void {
    entity.databases.splice(entity.databases.indexOf(database), 1)
    const key = EntityRegistry.tableKey(database, entity.schema, entity.table)
    if (this.byTable.get(key) === entity) this.byTable.delete(key)
  }

  /**
   * Registers a watched table that no declared type claims. Its name is the short .NET type name when known,
   * otherwise the table name without Marten's prefix. The same table in another tenant's database (database per
   * tenant) is the same type. Returns the type when it is new, otherwise undefined.
   */
  discover (database: string, schema: string, table: string, dotnetType: string | null, tenantColumn: boolean): EntityType | undefined {
    if (!this.options.discovery.enabled || this.forTable(database, schema, table) !== undefined) return undefined
    const name = (dotnetType !== null ? dotnetShortName(dotnetType) : null) ?? table.replace(/^mt_doc_/, '')
    const known = this.byName.get(name)
    if (known !== undefined) {
      if (!known.declared && known.tenancy === 'database' && this.tenantOf.has(database) && known.schema === schema && known.table === table) {
        known.databases.push(database)
        this.byTable.set(EntityRegistry.tableKey(database, schema, table), known)
      }
      return undefined
    }
    const entity: EntityType = {
      name,
      databases: [database],
      schema,
      table,
      access: this.options.discovery.access,
      payload: this.options.discovery.payload ?? 'minimal',
      feed: false,
      declared: false,
      tenancy: this.tenantOf.has(database) ? 'database' : tenantColumn ? 'conjoined' : 'none'
    }
    this.add(entity)
    return entity
  }

  /** A declared type's table turned out to have a tenant_id column (Marten conjoined tenancy). */
  markConjoined (entity: EntityType): void {
    if (entity.tenancy === 'none') entity.tenancy = 'conjoined'
  }

  /**
   * A declared type's table, found: a tenant_id column makes the type tenanted; a type taken for an aggregate of a
   * tenanted event store (it had no table) whose table has none is not, after all. True when that was taken back.
   */
  tableFound (entity: EntityType, { tenantColumn }: { tenantColumn: boolean }): boolean {
    if (tenantColumn) this.markConjoined(entity)
    if (tenantColumn || !this.tenantedByStore.delete(entity)) return false
    entity.tenancy = 'none'
    return true
  }

  /**
   * The event store of a database belongs to tenants (or not): its streams' tenant is then their entity's. A
   * declared type without a table there is a stream's aggregate, tenanted with it unless declared `tenanted: false`.
   */
  eventStoreFound (database: string, { tenanted, tableless }: { tenanted: boolean, tableless: EntityType[] }): void {
    if (tenanted) this.tenantedStores.add(database)
    else this.tenantedStores.delete(database)
    for (const entity of tableless) {
      this.aggregates.add(entity)
      if (!tenanted || entity.tenantedOption === false || entity.tenancy !== 'none') continue
      this.markConjoined(entity)
      this.tenantedByStore.add(entity)
    }
  }

  hasTenantedEventStore (database: string): boolean {
    return this.tenantedStores.has(database)
  }

  /** The types an event store feeds, as far as known: whose watchers must hear that it was emptied. */
  aggregatesIn (database: string): EntityType[] {
    return [...this.aggregates].filter((e) => e.databases.length === 0 || e.databases.includes(database))
  }

  /** A table under row-level security is read as a tenant: the setting its policy reads (null: read as it is). */
  readAs (database: string, schema: string, table: string, setting: string | null): void {
    const key = EntityRegistry.tableKey(database, schema, table)
    if (setting === null) this.rowSecurity.delete(key)
    else this.rowSecurity.set(key, setting)
  }

  /** The setting to set to the tenant before reading `entity`'s table in `database`, or null. */
  settingOf (database: string, entity: EntityType): string | null {
    return this.rowSecurity.get(EntityRegistry.tableKey(database, entity.schema, entity.table)) ?? null
  }

  /** The type a client names, or undefined. Declared names match exactly; discovered ones in any case. */
  get (name: string): EntityType | undefined {
    return this.byName.get(name) ?? this.byLowerName.get(name.toLowerCase())
  }

  forTable (database: string, schema: string, table: string): EntityType | undefined {
    return this.byTable.get(EntityRegistry.tableKey(database, schema, table))
  }

  /**
   * The entity type of an event stream: `capture.events.types` maps mt_streams.type to a name; otherwise a declared
   * type whose name matches ignoring case and separators ("rugby_game_state" → RugbyGameState); a stream started
   * without a type goes to `capture.events.untypedAs` when set.
   */
  forStream (streamType: string | null | undefined): EntityType | undefined {
    if (streamType === null || streamType === undefined) {
      const untyped = this.options.capture.events.untypedAs
      return untyped === undefined ? undefined : this.byName.get(untyped)
    }
    const mapped = this.options.capture.events.types[streamType]
    if (mapped !== undefined) return this.byName.get(mapped)
    const wanted = normalise(dotnetShortName(streamType) ?? streamType)
    const entity = this.all().find((e) => e.declared && normalise(e.name) === wanted)
    if (entity !== undefined) this.aggregates.add(entity)
    return entity
  }

  /** The declared types whose table is in a database. */
  declaredIn (database: string): EntityType[] {
    return this.all().filter((e) => e.declared && e.databases.includes(database))
  }

  /** Tables of `full` and `delta` types in a database and schema: the trigger inlines their documents when they fit. */
  inlineTables (database: string, schema: string): string[] {
    return this.all().filter((e) => e.databases.includes(database) && e.schema === schema && carriesDocument(e)).map((e) => e.table)
  }

  all (): EntityType[] {
    return [...this.byName.values()]
  }
}
