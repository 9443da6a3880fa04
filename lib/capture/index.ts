/**
 * Capture for every configured database: apply the trigger SQL, install on and discover the watched tables (in
 * every schema the database's types live in), listen, and look again when the event trigger reports a new table
 * and on an interval (where no event trigger could be created).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from './database.js'
import { applyTriggerScript, watchTables, type WatchedTable } from './install.js'
import { ListenerConnection, type ListenerEvents } from './listener.js'
import type { DdlNote } from './payloads.js'
import { carriesDocument, type EntityRegistry } from '../entities.js'
import type { ResolvedOptions } from '../options.js'
import type { Drops } from '../route/drops.js'
import { CaptureKeyError, DatabaseUnavailableError, EntityTableError } from '../errors.js'

/** The event store captured in `database` (schema, tables), or null (events off, or captured in another database). */
export function eventStoreOf (capture: ResolvedOptions['capture'], database: string, schema: string): { schema: string, table: string, streams: string } | null {
  const { events } = capture
  if (!events.enabled || (events.database !== undefined && events.database !== database)) return null
  return { schema: events.schema ?? schema, table: events.table, streams: events.streams }
}

/** What capture hands on: changes (notify mode), outbox batches (outbox mode), and gaps. */
export type CaptureEvents = Omit<ListenerEvents, 'onDdl' | 'onUnannounced'>

/** Looks at one database's tables now (a change of a table no type is bound to may be of one created a moment ago). */
export interface TableScanner {
  rescanDatabase(database: string): Promise<void>
}

export class Capture implements TableScanner {
  readonly listeners = new Map<string, ListenerConnection>()
  /** tables the trigger could not be put on ("database.schema.table" → why): their changes are not captured */
  readonly untriggered = new Map<string, string>()
  /** databases whose event store was looked for and not found (said once) */
  private readonly eventsMissing = new Set<string>()
  /** when each database's grants were last looked at for an unannounced change */
  private readonly lookedAtGrants = new Map<string, number>()
  /** declared tables found missing (warned once each) */
  private readonly missing = new Set<string>()
  /** whether a declared table found missing is worth a warning: from ready() on */
  private judging = false
  private rescanTimer: NodeJS.Timeout | null = null
  private readonly scans = new Map<string, Promise<void>>()

  constructor (
    private readonly databases: Map<string, Database>,
    private readonly registry: EntityRegistry,
    private readonly options: ResolvedOptions,
    private readonly log: FastifyBaseLogger,
    /** with a shared bus only one instance per database listens */
    private readonly leaderElection: boolean,
    private readonly drops: Drops
  ) {}

  private events: CaptureEvents | null = null

  /** Where changes, outbox batches and gaps go; before start(). */
  deliverTo (events: CaptureEvents): void {
    this.events = events
  }

  async start (): Promise<void> {
    const events = this.events
    if (events === null) throw new Error('changefeed: capture started with nowhere to deliver')
    const { capture } = this.options
    for (const db of this.databases.values()) {
      if (capture.installTriggers) await applyTriggerScript(db)
      await this.scan(db, { strict: true })
      const listener = new ListenerConnection(db, {
        channel: capture.channel,
        reconnectMaxDelayMs: capture.reconnectMaxDelayMs,
        leaderElection: this.leaderElection,
        leaderRetryMs: capture.leaderRetryMs,
        probeIntervalMs: capture.probeIntervalSeconds * 1000,
        outbox: capture.mode === 'outbox' ? capture.outbox : null
      }, {
        ...events,
        onDdl: (database, note) => this.onDdl(database, note),
        onUnannounced: (database) => this.onUnannounced(database)
      }, this.log, this.drops, this.registry.tenantOfDatabase(db.name))
      try {
        await listener.start()
      } catch (err) {
        if (err instanceof CaptureKeyError) throw err
        throw new DatabaseUnavailableError(db.name, (err as Error).message)
      }
      this.listeners.set(db.name, listener)
    }
    if (capture.rescanIntervalSeconds > 0) {
      this.rescanTimer = setInterval(() => { void this.rescanAll() }, capture.rescanIntervalSeconds * 1000)
      this.rescanTimer.unref()
    }
  }

  /** The schemas watched in a database: its own, and every schema its declared types name. */
  private schemasOf (database: string): Set<string> {
    const schemas = new Set([this.registry.schemaOf(database)])
    for (const entity of this.registry.declaredIn(database)) schemas.add(entity.schema)
    return schemas
  }

  /**
   * Installs on new matching tables, registers the undeclared ones, and checks the declared ones; installs the
   * event store's triggers when asked. At start (`strict`) a declared `full` type whose table has no `data` column
   * stops the server; later it is logged.
   */
  async scan (db: Database, { strict = false }: { strict?: boolean } = {}): Promise<void> {
    const { capture } = this.options
    const install = capture.installTriggers
    const outbox = capture.mode === 'outbox'
    const store = eventStoreOf(capture, db.name, this.registry.schemaOf(db.name))
    let granted = 0
    if (install && store !== null) {
      const [row] = await db.query<{ granted: number | null }>('SELECT changefeed_watch_events($1, $2, $3, $4, $5) AS granted', [store.schema, store.table, store.streams, capture.channel, outbox])
      if (row?.granted === null || row === undefined) {
        if (!this.eventsMissing.has(db.name)) this.log.info({ database: db.name, schema: store.schema, table: store.table }, 'changefeed: no event store yet; looking again at the next scan')
        this.eventsMissing.add(db.name)
      } else {
        this.eventsMissing.delete(db.name)
        granted += row.granted
      }
    }
    const declared = this.registry.declaredIn(db.name)
    const found = new Set<string>()
    for (const schema of this.schemasOf(db.name)) {
      const tables = await watchTables(db, {
        schema,
        patterns: capture.tables,
        tables: declared.filter((e) => e.schema === schema).map((e) => e.table),
        channel: capture.channel,
        inlineTables: this.registry.inlineTables(db.name, schema),
        outbox,
        install
      })
      for (const table of tables) {
        found.add(schema + '.' + table.table)
        granted += table.granted
        this.checkTable(db, table, strict)
      }
    }
    // a role that may write a watched table lacked the right to announce its changes until now: what it wrote
    // meanwhile reached nobody, so the database's watchers refetch
    if (granted > 0 && !strict) {
      this.log.warn({ database: db.name, roles: granted }, 'changefeed: roles that write watched tables were given the right to announce changes; watchers resync')
      this.events?.onGap(db.name, 'unannounced', { precaution: false })
    }
    // judged once the host is ready (ready()): it may create the tables after registering the plugin
    if (!this.judging) return
    const aggregates = capture.events.enabled ? new Set(Object.values(capture.events.types)) : new Set<string>()
    for (const entity of declared) {
      const where = `${db.name}.${entity.schema}.${entity.table}`
      if (found.has(entity.schema + '.' + entity.table) || this.missing.has(where) || aggregates.has(entity.name)) continue
      this.missing.add(where)
      this.log.warn({ database: db.name, schema: entity.schema, table: entity.table, entityType: entity.name },
        'changefeed: the table of a declared entity type does not exist (yet); its changes are captured once it does')
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
    const entity = this.registry.forTable(db.name, schema, table)
    if (entity?.declared === true) {
      this.missing.delete(where)
      if (found.tenantColumn) this.registry.markConjoined(entity)
      if (carriesDocument(entity) && !found.dataColumn) {
        const err = new EntityTableError(entity.name, `payload "${entity.payload}" needs a data column, and ${schema}.${table} has none`)
        if (strict) throw err
        this.log.error({ err }, 'changefeed: an entity type cannot be delivered in full')
      }
      return
    }
    const discovered = this.registry.discover(db.name, schema, table, found.dotnetType, found.tenantColumn)
    if (discovered !== undefined) this.log.debug({ database: db.name, schema, table, entityType: discovered.name }, 'changefeed: discovered entity type')
  }

  /** The event trigger reports a table created while we run: know its type now rather than at the next re-scan. */
  private onDdl (database: string, note: DdlNote): void {
    if (note.ddl === 'failed') {
      const where = `${database}.${note.s}.${note.t}`
      this.untriggered.set(where, note.error ?? 'unknown')
      this.log.warn({ database, schema: note.s, table: note.t, err: note.error }, 'changefeed: no capture trigger on a new table; its changes are not captured')
      return
    }
    const db = this.databases.get(database)
    if (db !== undefined) void this.scanOnce(db)
  }

  /**
   * A trigger's unsigned note that its writing role may not announce changes. Anyone may send one, so it only makes
   * the server look, at most once a second per database: the grants the scan finds missing are the evidence.
   */
  private onUnannounced (database: string): void {
    const now = Date.now()
    if ((this.lookedAtGrants.get(database) ?? 0) > now - 1000) return
    this.lookedAtGrants.set(database, now)
    void this.rescanDatabase(database)
  }

  /** One scan of a database at a time; a request during one is served by it. */
  private async scanOnce (db: Database): Promise<void> {
    const running = this.scans.get(db.name)
    if (running !== undefined) return await running
    const scan = this.scan(db)
      .catch((err: Error) => this.log.warn({ database: db.name, err: err.message }, 'changefeed: table re-scan failed'))
      .finally(() => this.scans.delete(db.name))
    this.scans.set(db.name, scan)
    await scan
  }

  /** Looks at one database's tables now, unless a look is under way (then waits for it). */
  async rescanDatabase (database: string): Promise<void> {
    const db = this.databases.get(database)
    if (db !== undefined) await this.scanOnce(db)
  }

  /**
   * The host is ready (its own tables made, the demo's too): looks at every database again, and from now on a
   * declared type whose table is missing is warned about.
   */
  async ready (): Promise<void> {
    this.judging = true
    await this.rescan()
  }

  /** Looks for new watched tables in every database now (the interval does it too). */
  async rescan (): Promise<void> {
    for (const db of this.databases.values()) await this.scan(db)
  }

  private async rescanAll (): Promise<void> {
    for (const db of this.databases.values()) await this.scanOnce(db)
  }

  async close (): Promise<void> {
    if (this.rescanTimer !== null) clearInterval(this.rescanTimer)
    await Promise.all([...this.listeners.values()].map(async (l) => await l.close()))
  }
}
