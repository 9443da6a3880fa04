/**
 * The one small database interface behind capture, routing and authorization. Two adapters: PostgreSQL through
 * `pg` (queries on the @fastify/postgres pool, LISTEN on a dedicated client outside it) and the embedded PGlite
 * (one in-process instance serves both).
 */
import pg from 'pg'
import { requirePackages } from '../package.js'

/** A dedicated connection for LISTEN (outside any pool). */
export interface ListenSession {
  /** Runs a query on this connection (leader election holds its advisory lock here). */
  query<R = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>
  /** Starts listening on a channel. */
  listen(channel: string): Promise<void>
  /** Stops listening and closes the connection; `onLost` is not called for this. */
  close(): Promise<void>
}

/** A probe: the connection's current snapshot, or a rejection when it does not answer within `ms`. */
export async function snapshotWithin (session: ListenSession, ms = 5000): Promise<string> {
  let timeout: NodeJS.Timeout | undefined
  try {
    const [row] = await Promise.race([
      session.query<{ snap: string }>('SELECT pg_current_snapshot()::text AS snap'),
      new Promise<never>((_resolve, reject) => { timeout = setTimeout(() => reject(new Error('no answer to the probe')), ms) })
    ])
    return row.snap
  } finally {
    clearTimeout(timeout)
  }
}

export interface ListenHandlers {
  onNotify(payload: string): void
  /** The connection dropped: NOTIFYs sent from now until a new session listens are lost. Called at most once. */
  onLost(err: Error): void
}

/** A setting set for one read: a row-level security policy's tenant. */
export interface ReadSetting { name: string, value: string }

export interface Database {
  readonly name: string
  query<R = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>
  /** Runs a read in a transaction of its own with `setting` set in it (set_config(name, value, true)). */
  queryAs<R = Record<string, unknown>>(setting: ReadSetting, text: string, params?: unknown[]): Promise<R[]>
  /** Runs a multi-statement script in one transaction; rolls back on error. */
  execScript(script: string): Promise<void>
  /** Opens a dedicated connection whose NOTIFYs on the channels it listens to go to `handlers`. */
  connectListener(handlers: ListenHandlers): Promise<ListenSession>
  close(): Promise<void>
}

/**
 * A read of a watched table: as `tenantId` where a row-level security policy reads the tenant from `setting`
 * (EntityRegistry.settingOf), as it is otherwise.
 */
export async function readAs<R> (db: Database, setting: string | null, tenantId: string | null, text: string, params: unknown[]): Promise<R[]> {
  return setting === null || tenantId === null ? await db.query<R>(text, params) : await db.queryAs<R>({ name: setting, value: tenantId }, text, params)
}

export function quoteIdent (name: string): string {
  return '"' + name.replace(/"/g, '""') + '"'
}

/**
 * PostgreSQL: `pool` is the @fastify/postgres pool named after the database (or, `owned`, one made for a tenant's
 * database found while running, closed with it); LISTEN uses its own client.
 */
export class PgDatabase implements Database {
  constructor (readonly name: string, private readonly pool: pg.Pool, private readonly connectionString: string, private readonly owned = false) {}

  async query<R>(text: string, params?: unknown[]): Promise<R[]> {
    const result = await this.pool.query(text, params as unknown[])
    return result.rows as R[]
  }

  async queryAs<R>(setting: ReadSetting, text: string, params?: unknown[]): Promise<R[]> {
    const client = await this.pool.connect()
    try {
      // one round trip for the transaction and its setting: the values are quoted by the driver
      await client.query(`BEGIN READ ONLY; SELECT set_config(${client.escapeLiteral(setting.name)}, ${client.escapeLiteral(setting.value)}, true)`)
      const result = await client.query(text, params as unknown[])
      await client.query('COMMIT')
      return result.rows as R[]
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    } finally {
      client.release()
    }
  }

  async execScript (script: string): Promise<void> {
    const client = await this.pool.connect()
    try {
      await client.query('BEGIN')
      await client.query(script)
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    } finally {
      client.release()
    }
  }

  async connectListener (handlers: ListenHandlers): Promise<ListenSession> {
    const client = new pg.Client({
      connectionString: this.connectionString,
      application_name: `changefeed-listener:${this.name}:${process.pid}`,
      keepAlive: true
    })
    let closing = false
    let lost = false
    const reportLost = (err: Error): void => {
      if (closing || lost) return
      lost = true
      client.end().catch(() => {})
      handlers.onLost(err)
    }
    client.on('error', reportLost)
    client.on('end', () => reportLost(new Error('listener connection ended')))
    client.on('notification', (msg) => {
      if (msg.payload !== undefined) handlers.onNotify(msg.payload)
    })
    try {
      await client.connect()
    } catch (err) {
      closing = true
      await client.end().catch(() => {})
      throw err
    }
    return {
      query: async <R>(text: string, params?: unknown[]) => (await client.query(text, params as unknown[])).rows as R[],
      listen: async (channel) => { await client.query(`LISTEN ${quoteIdent(channel)}`) },
      close: async () => {
        closing = true
        await client.end().catch(() => {})
      }
    }
  }

  async close (): Promise<void> {
    // a configured database's pool belongs to @fastify/postgres (or the host), which closes it
    if (this.owned) await this.pool.end().catch(() => {})
  }
}

/** Minimal shape of a PGlite instance, so that PGlite stays an optional, lazily loaded dependency. */
export interface PGliteLike {
  query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }>
  transaction<T>(work: (tx: { query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }> }) => Promise<T>): Promise<T>
  exec(script: string): Promise<unknown>
  listen(channel: string, cb: (payload: string) => void): Promise<() => Promise<void>>
  close(): Promise<void>
  readonly closed?: boolean
}

/** What this file uses of the PGlite module. */
export interface PGliteModule {
  PGlite: new (dataDir?: string) => PGliteLike & { waitReady: Promise<void> }
}

/** PGlite is an optional peer dependency (lib/package.ts); the demo may bring a copy it fetched (usePGlite). */
let loadPGlite = async (): Promise<PGliteModule> => {
  requirePackages('a pglite:// database', ['@electric-sql/pglite'])
  return await import('@electric-sql/pglite') as unknown as PGliteModule
}

/** Loads PGlite with `load` from now on: the standalone server's `--demo` fetches it when it is not installed. */
export function usePGlite (load: () => Promise<PGliteModule>): void {
  loadPGlite = load
}

/** The embedded PGlite: one in-process PostgreSQL, the same SQL and triggers. Its LISTEN never drops. */
export class PGliteDatabase implements Database {
  constructor (readonly name: string, readonly db: PGliteLike, private readonly owned: boolean) {}

  static async open (name: string, url: string): Promise<PGliteDatabase> {
    const { PGlite } = await loadPGlite()
    const dir = url.replace(/^pglite:(\/\/)?/, '')
    const db = dir === 'memory' || dir === '' ? new PGlite() : new PGlite(dir)
    await db.waitReady
    return new PGliteDatabase(name, db, true)
  }

  async query<R>(text: string, params?: unknown[]): Promise<R[]> {
    return (await this.db.query<R>(text, params)).rows
  }

  async queryAs<R>(setting: ReadSetting, text: string, params?: unknown[]): Promise<R[]> {
    return await this.db.transaction(async (tx) => {
      await tx.query('SELECT set_config($1, $2, true)', [setting.name, setting.value])
      return (await tx.query<R>(text, params)).rows
    })
  }

  async execScript (script: string): Promise<void> {
    try {
      await this.db.exec(`BEGIN;\n${script}\n;COMMIT;`)
    } catch (err) {
      await this.db.exec('ROLLBACK').catch(() => {})
      throw err
    }
  }

  async connectListener (handlers: ListenHandlers): Promise<ListenSession> {
    const channels: string[] = []
    return {
      query: async <R>(text: string, params?: unknown[]) => (await this.db.query<R>(text, params)).rows,
      // PGlite sends the name to LISTEN unquoted; quoting keeps names with ':' intact. Its own unlisten() sends
      // the name unquoted again (a syntax error for such names), so UNLISTEN is sent here, quoted.
      listen: async (channel) => {
        await this.db.listen(quoteIdent(channel), handlers.onNotify)
        channels.push(channel)
      },
      close: async () => {
        if (this.db.closed === true) return
        for (const channel of channels) await this.db.exec(`UNLISTEN ${quoteIdent(channel)}`)
      }
    }
  }

  async close (): Promise<void> {
    if (this.owned && this.db.closed !== true) await this.db.close()
  }
}
