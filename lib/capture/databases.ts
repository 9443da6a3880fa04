/**
 * The databases capture reads and writes: a @fastify/postgres pool per PostgreSQL database (the host's, when it
 * registered one under the same name, else ours), or the embedded PGlite for `pglite:` urls.
 */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import pg from 'pg'
import { PGliteDatabase, PgDatabase, type Database } from './database.js'
import { DatabaseMismatchError, DatabaseUnavailableError } from '../errors.js'

type PostgresDecorator = Record<string, { pool?: pg.Pool } | undefined>

function poolOf (fastify: FastifyInstance, name: string): pg.Pool | undefined {
  return (fastify as unknown as { pg?: PostgresDecorator }).pg?.[name]?.pool
}

export async function openDatabases (fastify: FastifyInstance, list: ReadonlyArray<{ name: string, url: string }>): Promise<Map<string, Database>> {
  const databases = new Map<string, Database>()
  for (const { name, url } of list) {
    if (url.startsWith('pglite:')) {
      databases.set(name, await PGliteDatabase.open(name, url))
      continue
    }
    // a host that registered @fastify/postgres under this name keeps its pool; otherwise we register one
    const own = poolOf(fastify, name) === undefined
    if (own) await fastify.register(fastifyPostgres, { name, connectionString: url })
    const pool = poolOf(fastify, name)
    if (pool === undefined) throw new Error(`@fastify/postgres registered no pool named ${name}`)
    // an idle connection cut by the server (a restart, pg_terminate_backend) is an 'error' on the pool, which
    // ends the process when nobody listens; the pool has already dropped it and connects anew on the next query
    if (own) pool.on('error', (err) => fastify.log.warn({ database: name, err: err.message }, 'changefeed: an idle database connection was lost'))
    const db = new PgDatabase(name, pool, url)
    const reached = await reach(db, url)
    // the listener connects with `url` and queries go through the pool: both must be the same database
    const expected = target(url).database
    if (!own && expected !== '' && reached !== expected) throw new DatabaseMismatchError(name, reached, expected)
    databases.set(name, db)
  }
  return databases
}

/**
 * A tenant's database found while running (a tenant registry): @fastify/postgres cannot register a pool once the
 * host is ready, so it gets a pool of its own, closed with it. Rejects with CHANGEFEED_DATABASE_UNAVAILABLE.
 */
export async function openTenantDatabase (name: string, url: string, log: FastifyBaseLogger): Promise<Database> {
  const pool = new pg.Pool({ connectionString: url, max: 4 })
  pool.on('error', (err) => log.warn({ database: name, err: err.message }, 'changefeed: an idle database connection was lost'))
  const db = new PgDatabase(name, pool, url, true)
  try {
    await reach(db, url)
  } catch (err) {
    await db.close()
    throw err
  }
  return db
}

/** Where a url points, without its password: `host:port`, the database and the role (empty: the server's default). */
export function target (url: string): { server: string, database: string, role: string } {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return { server: 'the server of its url', database: '', role: '' }
  }
  const host = parsed.hostname !== '' ? parsed.hostname : parsed.searchParams.get('host') ?? 'localhost'
  return {
    server: `${host}:${parsed.port !== '' ? parsed.port : '5432'}`,
    database: decodeURIComponent(parsed.pathname.replace(/^\//, '')),
    role: decodeURIComponent(parsed.username)
  }
}

/**
 * The first query on a database, before anything else runs there: the name of the database the pool reached, or
 * CHANGEFEED_DATABASE_UNAVAILABLE naming the server, and the database or role it refused (never the password).
 * Without it, a wrong port surfaced as a failed trigger install, or uncoded.
 */
async function reach (db: PgDatabase, url: string): Promise<string> {
  try {
    const [row] = await db.query<{ name: string }>('SELECT current_database() AS name')
    return row?.name ?? '?'
  } catch (err) {
    const { server, database, role } = target(url)
    const e = err as Error & { code?: string }
    const why = e.code === '3D000'
      ? `the server at ${server} has no database "${database}"`
      : e.code === '28000' || e.code === '28P01'
        ? `the server at ${server} refused role ${role === '' ? '(the default)' : `"${role}"`}: ${e.message}`
        : e.code === 'ECONNREFUSED'
          ? `nothing answers at ${server}`
          : `${server}: ${e.message === '' ? 'failed' : e.message}`
    throw new DatabaseUnavailableError(db.name, e.code === undefined ? why : `${why} (${e.code})`)
  }
}
