/**
 * Capture for every configured database: apply the trigger SQL, install on and discover the watched tables,
 * listen, and re-scan on an interval for tables created later (where no event trigger could be created).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from './database.js'
import { applyTriggerScript, watchTables } from './install.js'
import { ListenerConnection, type ListenerEvents } from './listener.js'
import type { EntityRegistry } from '../entities.js'
import type { ResolvedOptions } from '../options.js'
import { DatabaseUnavailableError } from '../errors.js'

/** The event table captured in `database`, or null (events off, or captured in another database). */
export function eventTableOf (capture: ResolvedOptions['capture'], database: string): string | null {
  const { events } = capture
  return events.enabled && (events.database === undefined || events.database === database) ? events.table : null
}

export class Capture {
  readonly listeners = new Map<string, ListenerConnection>()
  private readonly eventsInstalled = new Set<string>()
  private rescanTimer: NodeJS.Timeout | null = null

  constructor (
    private readonly databases: Map<string, Database>,
    private readonly registry: EntityRegistry,
    private readonly options: ResolvedOptions,
    private readonly events: ListenerEvents,
    private readonly log: FastifyBaseLogger,
    /** with a shared bus only one instance per database listens */
    private readonly leaderElection: boolean
  ) {}

  async start (): Promise<void> {
    const { capture } = this.options
    for (const db of this.databases.values()) {
      if (capture.installTriggers) await applyTriggerScript(db)
      await this.scan(db)
      const listener = new ListenerConnection(db, {
        channel: capture.channel,
        reconnectMaxDelayMs: capture.reconnectMaxDelayMs,
        leaderElection: this.leaderElection,
        leaderRetryMs: capture.leaderRetryMs,
        probeIntervalMs: capture.probeIntervalSeconds * 1000,
        outbox: capture.mode === 'outbox' ? capture.outbox : null
      }, this.events, this.log)
      try {
        await listener.start()
      } catch (err) {
        throw new DatabaseUnavailableError(db.name, (err as Error).message)
      }
      this.listeners.set(db.name, listener)
    }
    if (capture.rescanIntervalSeconds > 0) {
      this.rescanTimer = setInterval(() => { void this.rescanAll() }, capture.rescanIntervalSeconds * 1000)
      this.rescanTimer.unref()
    }
  }

  /** Installs on new matching tables and registers the undeclared ones; installs the event trigger when asked. */
  async scan (db: Database): Promise<void> {
    const { capture } = this.options
    const { events } = capture
    if (capture.installTriggers && eventTableOf(capture, db.name) !== null && !this.eventsInstalled.has(db.name)) {
      const [row] = await db.query<{ ok: boolean }>('SELECT changefeed_watch_events($1, $2, $3, $4, $5) AS ok', [capture.schema, events.table, events.streams, capture.channel, capture.mode === 'outbox'])
      if (row?.ok === true) this.eventsInstalled.add(db.name)
      else this.log.info({ database: db.name, table: events.table }, 'changefeed: no event table yet; looking again at the next scan')
    }
    const tables = await watchTables(db, capture, this.registry.inlineTables(db.name), capture.installTriggers)
    for (const { table, dotnetType } of tables) {
      const entity = this.registry.discover(db.name, capture.schema, table, dotnetType)
      if (entity !== undefined) this.log.debug({ database: db.name, table, entityType: entity.name }, 'changefeed: discovered entity type')
    }
  }

  /** Looks for new watched tables in every database now (the interval does it too). */
  async rescan (): Promise<void> {
    for (const db of this.databases.values()) await this.scan(db)
  }

  private async rescanAll (): Promise<void> {
    for (const db of this.databases.values()) {
      try {
        await this.scan(db)
      } catch (err) {
        this.log.warn({ database: db.name, err: (err as Error).message }, 'changefeed: table re-scan failed')
      }
    }
  }

  async close (): Promise<void> {
    if (this.rescanTimer !== null) clearInterval(this.rescanTimer)
    await Promise.all([...this.listeners.values()].map(async (l) => await l.close()))
  }
}
