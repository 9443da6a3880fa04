/**
 * Capture for every database: apply the trigger SQL, install on and discover the watched tables (lib/capture/
 * tables.ts), listen, and look again when an event trigger reports a table made or dropped, and on an interval
 * (where no event trigger could be created). A database with a table of tenant databases (Marten's
 * MasterTableTenancy) also starts and stops capturing its tenants' databases while running (tenant-registry.ts).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from './database.js'
import { openTenantDatabase } from './databases.js'
import { ListenerConnection, type ListenerEvents } from './listener.js'
import type { DdlNote } from './payloads.js'
import { WatchedTables, type ScanEvents } from './tables.js'
import { TenantRegistry } from './tenant-registry.js'
import { tenantRegistryOf } from './options.js'
import type { EntityRegistry } from '../entities.js'
import type { ResolvedOptions } from '../options.js'
import type { Drops } from '../route/drops.js'
import type { HandoffRecord } from '../bus/handoff-record.js'
import { CaptureKeyError, DatabaseUnavailableError } from '../errors.js'

export { eventStoreOf } from './tables.js'

/**
 * What capture hands on: changes (notify mode), outbox batches (outbox mode), gaps, tables made again, and the event
 * triggers' notes heard (`onTables`: the instances that do not listen to the database look again; lookAgain).
 */
export type CaptureEvents = Omit<ListenerEvents, 'onDdl' | 'onUnannounced'> & Pick<ScanEvents, 'onTypes'> & { onTables(database: string): void }

/** Looks at one database's tables now (a change of a table no type is bound to may be of one created a moment ago). */
export interface TableScanner {
  rescanDatabase(database: string): Promise<void>
}

export class Capture implements TableScanner {
  readonly listeners = new Map<string, ListenerConnection>()
  private readonly tables: WatchedTables
  /** database → the table of tenant databases it holds */
  private readonly registries = new Map<string, TenantRegistry>()
  /** when each database's grants were last looked at for an unannounced change */
  private readonly lookedAtGrants = new Map<string, number>()
  private rescanTimer: NodeJS.Timeout | null = null
  private readonly scans = new Map<string, { running: Promise<void>, next?: Promise<void> }>()
  private events: CaptureEvents | null = null

  constructor (
    /** the databases by name; those of tenants found while running are added to it and removed again */
    private readonly databases: Map<string, Database>,
    private readonly registry: EntityRegistry,
    private readonly options: ResolvedOptions,
    private readonly log: FastifyBaseLogger,
    /** with a shared bus only one instance per database listens */
    private readonly leaderElection: boolean,
    private readonly drops: Drops,
    /** where a leader records what it handed on (a shared bus; null: a takeover is a gap) */
    private readonly handoff: HandoffRecord | null = null
  ) {
    this.tables = new WatchedTables(registry, options, log, {
      onUnannounced: (database) => this.events?.onGap(database, 'unannounced', { precaution: false }),
      // every instance scans; the one that listens to the database tells the cluster
      onTypes: (database, types, reason) => { if (this.listeners.get(database)?.isLeader === true) this.events?.onTypes(database, types, reason) }
    })
  }

  /** tables the trigger could not be put on ("database.schema.table" → why): their changes are not captured */
  get untriggered (): ReadonlyMap<string, string> {
    return this.tables.untriggered
  }

  /** Where changes, outbox batches and gaps go; before start(). */
  deliverTo (events: CaptureEvents): void {
    this.events = events
  }

  async start (): Promise<void> {
    const events = this.events
    if (events === null) throw new Error('changefeed: capture started with nowhere to deliver')
    for (const db of this.databases.values()) await this.startDatabase(db, events, { strict: true })
    const configured = new Set(this.options.databases.flatMap((db) => db.tenant === undefined ? [] : [db.tenant]))
    for (const db of this.options.databases) {
      const table = tenantRegistryOf(db, this.registry.schemaOf(db.name))
      const holder = this.databases.get(db.name)
      if (table === null || holder === undefined) continue
      const registry = new TenantRegistry(holder, table, {
        add: async (name, tenant, url) => await this.addTenantDatabase(name, tenant, url),
        remove: async (name) => await this.removeDatabase(name)
      }, configured, this.log)
      this.registries.set(db.name, registry)
      await registry.refresh()
    }
    const { rescanIntervalSeconds } = this.options.capture
    if (rescanIntervalSeconds > 0) {
      this.rescanTimer = setInterval(() => { void this.rescanAll() }, rescanIntervalSeconds * 1000)
      this.rescanTimer.unref()
    }
  }

  /** The trigger SQL, the tables, then the database's listener. */
  private async startDatabase (db: Database, events: CaptureEvents, { strict }: { strict: boolean }): Promise<void> {
    const { capture } = this.options
    await this.tables.prepare(db, { strict })
    const listener = new ListenerConnection(db, {
      channel: capture.channel,
      reconnectMaxDelayMs: capture.reconnectMaxDelayMs,
      leaderElection: this.leaderElection,
      leaderRetryMs: capture.leaderRetryMs,
      probeIntervalMs: capture.probeIntervalSeconds * 1000,
      outbox: capture.mode === 'outbox' ? capture.outbox : null,
      standby: capture.standby.enabled && this.handoff !== null
        ? { maxTransactions: capture.standby.maxTransactions, windowMs: capture.standby.windowSeconds * 1000, record: this.handoff }
        : null
    }, {
      ...events,
      // a note on the table of tenant databases may have been lost with the connection
      onGap: (database, reason, gap) => {
        events.onGap(database, reason, gap)
        void this.registries.get(database)?.refresh()
      },
      onDdl: (database, note) => this.onDdl(database, note),
      onUnannounced: (database) => this.onUnannounced(database)
    }, this.log, this.drops, this.registry.tenantOfDatabase(db.name))
    try {
      await listener.start()
    } catch (err) {
      await listener.close()
      if (err instanceof CaptureKeyError) throw err
      throw new DatabaseUnavailableError(db.name, (err as Error).message)
    }
    this.listeners.set(db.name, listener)
  }

  /** A tenant's database found in a table of tenant databases: captured like a configured one, with its own pool. */
  private async addTenantDatabase (name: string, tenant: string, url: string): Promise<void> {
    const events = this.events
    if (events === null) return
    const db = await openTenantDatabase(name, url, this.log)
    this.databases.set(name, db)
    this.registry.addTenantDatabase(name, tenant)
    try {
      await this.startDatabase(db, events, { strict: false })
    } catch (err) {
      await this.removeDatabase(name)
      throw err
    }
  }

  /** A tenant's database no longer captured: its listener and pool closed, its types no longer fed by it. */
  private async removeDatabase (name: string): Promise<void> {
    // its tenant is no one's to name from the moment it is not listened to; the closing comes after
    const listener = this.listeners.get(name)
    const db = this.databases.get(name)
    this.listeners.delete(name)
    this.databases.delete(name)
    this.registry.removeDatabase(name)
    this.tables.forgetDatabase(name)
    await listener?.close()
    await db?.close()
  }

  /**
   * An event trigger's note: a table made (know its type now rather than at the next re-scan; `fresh`: at the end of
   * a rebuild, whether in the transaction that made it), not triggered, dropped, or the table of tenant databases
   * changed. The other instances are told (lookAgain); of a table, once this one judged it: a table made again is
   * reported by the one that listens, and another that saw it first would take it as known.
   */
  private onDdl (database: string, note: DdlNote): void {
    const tell = (): void => { if (this.listeners.get(database)?.isLeader === true) this.events?.onTables(database) }
    if (note.ddl === 'failed') {
      this.tables.untriggered.set(`${database}.${note.s}.${note.t}`, note.error ?? 'unknown')
      this.log.warn({ database, schema: note.s, table: note.t, err: note.error }, 'changefeed: no capture trigger on a new table; its changes are not captured')
      return
    }
    if (note.ddl === 'registry') {
      tell()
      void this.registries.get(database)?.refresh()
      return
    }
    if (note.fresh !== undefined) this.tables.rebuilt(database, note.s, note.t, note.fresh ? note.oid ?? null : null)
    void this.rescanDatabase(database).then(tell)
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

  /**
   * One scan of a database at a time. A request during one is served by the next, run once it ends: the scan under
   * way may have read the catalog before what the request is about (a rebuild's table got its trigger after it
   * looked). Requests during a scan share that one next scan.
   */
  private async scanOnce (db: Database): Promise<void> {
    const scans = this.scans.get(db.name)
    if (scans !== undefined) {
      scans.next ??= scans.running.then(async () => await this.startScan(db))
      return await scans.next
    }
    await this.startScan(db)
  }

  private async startScan (db: Database): Promise<void> {
    const running = this.tables.scan(db)
      .then(async () => await this.registries.get(db.name)?.refresh())
      .catch((err: Error) => this.log.warn({ database: db.name, err: err.message }, 'changefeed: table re-scan failed'))
      .finally(() => this.scans.delete(db.name))
    this.scans.set(db.name, { running })
    await running
  }

  /**
   * Another instance heard an event trigger's note of `database` (a table made or dropped, a tenant added): unless
   * this one heard it too (it listens to the database), it looks now rather than at its next re-scan. A database
   * not started yet (before start, a tenant's being added) is looked at as it starts.
   */
  lookAgain (database: string): void {
    const listener = this.listeners.get(database)
    if (listener !== undefined && !listener.isLeader) void this.rescanDatabase(database)
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
    this.tables.judging = true
    await this.rescan()
  }

  /** Looks for new watched tables in every database now (the interval does it too). */
  async rescan (): Promise<void> {
    for (const db of [...this.databases.values()]) {
      await this.tables.scan(db)
      await this.registries.get(db.name)?.refresh()
    }
  }

  private async rescanAll (): Promise<void> {
    for (const db of [...this.databases.values()]) await this.scanOnce(db)
  }

  async close (): Promise<void> {
    if (this.rescanTimer !== null) clearInterval(this.rescanTimer)
    for (const registry of this.registries.values()) registry.close()
    await Promise.all([...this.listeners.values()].map(async (l) => await l.close()))
    // the tenants' databases found while running are this capture's own
    const configured = new Set(this.options.databases.map((db) => db.name))
    for (const name of [...this.databases.keys()]) if (!configured.has(name)) await this.removeDatabase(name)
  }
}
