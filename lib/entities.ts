/**
 * The entity registry: which table is which entity type, who may watch it, and what a notification carries.
 * Declared types come from options; discovery adds the remaining watched tables (Marten `mt_doc_*`), which can be
 * subscribed to only when `discovery.access` gives them an access rule.
 */
import type { AccessKindName, PayloadModeName, ResolvedOptions } from './options.js'

export interface EntityType {
  name: string
  database: string
  schema: string
  table: string
  /** null: known (its changes are recognised) but nobody may subscribe */
  access: AccessKindName | null
  payload: PayloadModeName
  ownerPath?: string[]
  /** type-wide subscriptions (entityId "*") allowed */
  feed: boolean
  declared: boolean
}

const normalise = (name: string): string => name.toLowerCase().replace(/[^a-z0-9]/g, '')

/** Marten's table name for a document type: mt_doc_ + the lowercased type name. */
export function martenTable (typeName: string): string {
  return 'mt_doc_' + typeName.toLowerCase().replace(/[^a-z0-9_]/g, '_')
}

/**
 * The short type name from Marten's `mt_dotnet_type` ("Ballr.Domain.RugbyGameState, Ballr.Domain" →
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

  constructor (private readonly options: ResolvedOptions) {
    const onlyDatabase = options.databases.length === 1 ? options.databases[0].name : undefined
    for (const [name, e] of Object.entries(options.entities)) {
      const database = e.database ?? onlyDatabase ?? ''
      this.add({
        name,
        database,
        schema: options.capture.schema,
        table: e.table ?? martenTable(name),
        access: e.access,
        payload: e.payload ?? 'minimal',
        ownerPath: e.ownerPath,
        feed: e.feed === true,
        declared: true
      })
    }
  }

  private static tableKey (database: string, schema: string, table: string): string {
    return database + '\u0000' + schema + '\u0000' + table
  }

  private add (entity: EntityType): void {
    this.byName.set(entity.name, entity)
    if (!entity.declared) this.byLowerName.set(entity.name.toLowerCase(), entity)
    this.byTable.set(EntityRegistry.tableKey(entity.database, entity.schema, entity.table), entity)
  }

  /**
   * Registers a watched table that no declared type claims. Its name is the short .NET type name when known,
   * otherwise the table name without Marten's prefix. Returns the type, or undefined when it was already known.
   */
  discover (database: string, schema: string, table: string, dotnetType: string | null): EntityType | undefined {
    if (!this.options.discovery.enabled || this.forTable(database, schema, table) !== undefined) return undefined
    const name = (dotnetType !== null ? dotnetShortName(dotnetType) : null) ?? table.replace(/^mt_doc_/, '')
    if (this.byName.has(name)) return undefined
    const entity: EntityType = {
      name,
      database,
      schema,
      table,
      access: this.options.discovery.access,
      payload: this.options.discovery.payload ?? 'minimal',
      feed: false,
      declared: false
    }
    this.add(entity)
    return entity
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
   * type whose name matches ignoring case and separators ("rugby_game_state" → RugbyGameState).
   */
  forStream (streamType: string | null | undefined): EntityType | undefined {
    if (streamType === null || streamType === undefined) return undefined
    const mapped = this.options.capture.events.types[streamType]
    if (mapped !== undefined) return this.byName.get(mapped)
    const wanted = normalise(dotnetShortName(streamType) ?? streamType)
    return this.all().find((e) => e.declared && normalise(e.name) === wanted)
  }

  /** Tables of `full` types in a database: the trigger inlines their documents when they fit. */
  inlineTables (database: string): string[] {
    return this.all().filter((e) => e.database === database && e.payload === 'full').map((e) => e.table)
  }

  all (): EntityType[] {
    return [...this.byName.values()]
  }
}
