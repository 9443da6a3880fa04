/**
 * The databases capture reads and writes: a @fastify/postgres pool per PostgreSQL database (the host's, when it
 * registered one under the same name, else ours), or the embedded PGlite for `pglite:` urls.
 */
import type { FastifyInstance } from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import type pg from 'pg'
import { PGliteDatabase, PgDatabase, type Database } from './database.js'
import { DatabaseMismatchError } from '../errors.js'

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
    // the listener connects with `url` and queries go through the pool: both must be the same database
    if (!own) await checkSameDatabase(db, url)
    databases.set(name, db)
  }
  return databases
}

/** A host's pool registered under a database's name must reach the database its url names. */
async function checkSameDatabase (db: PgDatabase, url: string): Promise<void> {
  const expected = decodeURIComponent(new URL(url).pathname.replace(/^\//, ''))
  const [row] = await db.query<{ name: string }>('SELECT current_database() AS name')
  if (expected !== '' && row?.name !== expected) throw new DatabaseMismatchError(db.name, row?.name ?? '?', expected)
}
