/**
 * Real services for the tests. A missing service is a failure that says which one and how to start it; tests
 * never skip for it.
 */
import pg from 'pg'
import { documentTable } from '../fixtures/marten/index.js'

export const PG_HOST = process.env.PGHOST_TEST ?? '127.0.0.1'
export const PG_ADMIN_URL = `postgres://postgres@${PG_HOST}:5432/postgres`

const HOW_TO_START = {
  PostgreSQL: 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
} as const

export class ServiceUnavailableError extends Error {
  constructor (service: keyof typeof HOW_TO_START, where: string, cause: unknown) {
    super(`${service} is not reachable at ${where} (${(cause as Error).message}); start it with: ${HOW_TO_START[service]}`)
    this.name = 'ServiceUnavailableError'
  }
}

export async function adminQuery (sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL })
  try {
    await client.connect()
  } catch (err) {
    throw new ServiceUnavailableError('PostgreSQL', `${PG_HOST}:5432`, err)
  }
  try {
    return await client.query(sql, params)
  } finally {
    await client.end()
  }
}

interface Teardown { teardown(fn: () => unknown): void }

/**
 * A fresh, empty database for one test file; dropped at teardown. Returns its connection string. Made from
 * template0: PostgreSQL refuses to copy template1 while any other session is connected to it (55006), which
 * another program on the same server may well be.
 */
export async function freshDatabase (t: Teardown, label: string): Promise<string> {
  const name = `cf_test_${label}_${process.pid}`
  await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE template0`)
  t.teardown(async () => { await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) })
  return `postgres://postgres@${PG_HOST}:5432/${name}`
}

/** A pg client for writing test data; closed at teardown. */
export async function sqlClient (t: Teardown, url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(async () => { await client.end() })
  return client
}

/**
 * A Marten document table as Marten 8 creates it (test/fixtures/marten): string id, soft deletes. Every capture
 * test runs against Marten's own DDL rather than a look-alike.
 */
export function martenTableSql (table: string, schema = 'public'): string {
  return documentTable({ schema, name: table.replace(/^mt_doc_/, ''), idType: 'string', softDelete: true })
}
