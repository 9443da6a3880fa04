/**
 * The entity registry: which table is which entity type, who may watch it, what a notification carries, and how
 * its entities belong to tenants. Declared types come from options; discovery adds the remaining watched tables
 * (Marten `mt_doc_*`), which can be subscribed to only when `discovery.access` gives them an access rule.
 */
import type { AccessKindName, PayloadModeName, ResolvedOptions } from './options.js'

/**
 * How a type's entities belong to tenants: not at all; by a `tenant_id` column (Marten conjoined tenancy, also
 * partitioned by tenant); or by database (database per tenant: `databases[].tenant`). An entity is then
 * (type, tenant, id).
 */
export type Tenancy = 'none' | 'conjoined' | 'database'

export interface EntityType {
  name: string
  /** the databases its table lives in: one, or one per tenant (database per tenant) */
  databases: string[]
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

  constructor (private readonly options: ResolvedOptions) {
    for (const db of options.databases) if (db.tenant !== undefined) this.tenantOf.set(db.name, db.tenant)
    const onlyDatabase = options.databases.length === 1 ? options.databases[0].name : undefined
    for (const [name, e] of Object.entries(options.entities)) {
      const databases = e.database === undefined ? (onlyDatabase === undefined ? [] : [onlyDatabase]) : [e.database].flat()
      const byDatabase = databases.length > 0 && databases.every((db) => this.tenantOf.has(db))
      this.add({
        name,
        databases,
        schema: e.schema ?? this.schemaOf(databases[0]),
        table: e.table ?? martenTable(name),
        access: e.access,
        payload: e.payload ?? 'minimal',
        ownerPath: e.ownerPath,
        feed: e.feed === true,
        declared: true,
        tenancy: byDatabase ? 'database' : e.tenanted === true ? 'conjoined' : 'none'
      })
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
    return this.all().find((e) => e.declared && normalise(e.name) === wanted)
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
