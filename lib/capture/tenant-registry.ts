/**
 * Marten's MasterTableTenancy keeps its tenants' databases in a table (`mt_tenant_databases`: tenant_id,
 * connection_string, disabled), and adds tenants while it runs. With `databases[].tenantRegistry` the server reads it
 * at start, again whenever its trigger says it changed (sql/changefeed.sql, changefeed_watch_registry: heard by the
 * instance that listens to its database, which tells the others), after its database's listener reconnects, and at
 * every re-scan; it starts capturing each enabled tenant's database (a pool, the trigger SQL, a listener) and stops
 * for one removed, disabled or moved to another connection string. Connection strings hold passwords: none reaches
 * a log line (only the server, database and role they name).
 */
import type { FastifyBaseLogger } from 'fastify'
import { quoteIdent, type Database } from './database.js'
import { connectionUrl } from './connection-string.js'
import { target } from './databases.js'

/** What a registry starts and stops. */
export interface TenantDatabases {
  /** Starts capturing the tenant's database named `name`; rejects when it cannot (the next read tries again). */
  add(name: string, tenant: string, url: string): Promise<void>
  remove(name: string): Promise<void>
}

/** Tenant ids are what a subscription may name: at most 128 characters, no ':' and no control characters. */
const TENANT_ID = /^[^:\p{Cc}]{1,128}$/u

export class TenantRegistry {
  /** tenant → the database capturing it, and the URL it was started with */
  private readonly running = new Map<string, { name: string, url: string }>()
  /** what was said about a row (tenant → why), so a bad row is logged once */
  private readonly refused = new Map<string, string>()
  private reading: Promise<void> | null = null
  private again = false
  private closed = false

  constructor (
    private readonly db: Database,
    private readonly table: { schema: string, table: string },
    private readonly databases: TenantDatabases,
    /** tenants that have a configured database (databases[].tenant): the configuration wins */
    private readonly configured: ReadonlySet<string>,
    private readonly log: FastifyBaseLogger
  ) {}

  /** The database name of a registered tenant's database: unlike a configured one's, it holds a '/'. */
  private nameOf (tenant: string): string {
    return `${this.db.name}/${tenant}`
  }

  /** Reads the table and acts on it; one read at a time, and a request during one runs another after it. */
  async refresh (): Promise<void> {
    if (this.reading !== null) {
      this.again = true
      return await this.reading
    }
    this.reading = (async () => {
      do {
        this.again = false
        await this.read().catch((err: Error) => this.log.warn({ database: this.db.name, err: err.message }, 'changefeed: reading the table of tenant databases failed; trying again at the next change or re-scan'))
      } while (this.again && !this.closed)
    })().finally(() => { this.reading = null })
    await this.reading
  }

  private async read (): Promise<void> {
    const table = `${quoteIdent(this.table.schema)}.${quoteIdent(this.table.table)}`
    const [{ exists, disabled }] = await this.db.query<{ exists: boolean, disabled: boolean }>(
      `SELECT to_regclass($1) IS NOT NULL AS exists,
              EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)::oid AND attname = 'disabled' AND NOT attisdropped) AS disabled`, [table])
    // not made yet (Marten makes it on first use): nothing to start, and nothing known to stop
    if (!exists || this.closed) return
    const rows = await this.db.query<{ tenant: string, connection: string }>(
      `SELECT tenant_id::text AS tenant, connection_string::text AS connection FROM ${table}${disabled ? ' WHERE NOT disabled' : ''}`)
    const wanted = new Map<string, string>()
    for (const { tenant, connection } of rows) {
      const url = connectionUrl(connection ?? '')
      const why = !TENANT_ID.test(tenant)
        ? 'its tenant id is not one a subscription can name (1–128 characters, no ":")'
        : this.configured.has(tenant)
          ? 'the tenant has a configured database (databases[].tenant)'
          : url === null ? 'its connection string is neither a URL nor Npgsql\'s Host=…;Database=…' : null
      if (why === null && url !== null) {
        wanted.set(tenant, url)
        this.refused.delete(tenant)
      } else if (this.refused.get(tenant) !== why && why !== null) {
        this.refused.set(tenant, why)
        this.log.warn({ database: this.db.name, tenant, why }, 'changefeed: a tenant of the table of tenant databases is not captured')
      }
    }
    for (const [tenant, { name, url }] of [...this.running]) {
      if (wanted.get(tenant) === url) continue
      this.running.delete(tenant)
      await this.databases.remove(name)
      this.log.info({ database: name, tenant }, 'changefeed: a tenant database left the table of tenant databases; no longer captured')
    }
    for (const [tenant, url] of wanted) {
      if (this.running.has(tenant) || this.closed) continue
      const name = this.nameOf(tenant)
      try {
        await this.databases.add(name, tenant, url)
        this.running.set(tenant, { name, url })
        this.log.info({ database: name, tenant, server: target(url).server }, 'changefeed: capturing a tenant database found in the table of tenant databases')
      } catch (err) {
        this.log.warn({ database: name, tenant, err: (err as Error).message }, 'changefeed: a tenant database of the table of tenant databases cannot be captured; trying again at the next change or re-scan')
      }
    }
  }

  /** Stops reading; the databases it started are closed by their owner (Capture.close). */
  close (): void {
    this.closed = true
  }
}
