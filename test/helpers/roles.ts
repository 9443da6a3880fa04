/**
 * Database roles as a deployment has them: an application role that is not superuser (Marten's: it creates its
 * tables on first use), and roles with fewer rights. Dropped at teardown with what they own.
 */
import pg from 'pg'
import { adminQuery, PG_HOST } from './services.js'

interface Teardown { teardown(fn: () => unknown): void }

export interface Role {
  name: string
  /** the database's url, connecting as this role */
  url: string
  /** a connection as this role, closed at teardown */
  client(): Promise<pg.Client>
}

/**
 * A login role in the database of `url`, not superuser. `schemas`: where it may create objects (it owns the
 * ones that do not exist yet).
 */
export async function role (t: Teardown, url: string, label: string, schemas: string[] = []): Promise<Role> {
  const database = new URL(url).pathname.slice(1)
  const name = `cf_${label}_${process.pid}`
  const inDatabase = async (sql: string): Promise<void> => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try { await client.query(sql) } finally { await client.end() }
  }
  await adminQuery(`DROP ROLE IF EXISTS ${name}`).catch(() => {})
  await adminQuery(`CREATE ROLE ${name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE`)
  await inDatabase(`GRANT CONNECT ON DATABASE ${database} TO ${name}`)
  for (const schema of schemas) {
    await inDatabase(`CREATE SCHEMA IF NOT EXISTS ${schema}; GRANT USAGE, CREATE ON SCHEMA ${schema} TO ${name}`)
  }
  const clients: pg.Client[] = []
  t.teardown(async () => {
    for (const c of clients) await c.end().catch(() => {})
    // its objects in the database first (the database may already be gone)
    await inDatabase(`DROP OWNED BY ${name} CASCADE`).catch(() => {})
    await adminQuery(`DROP ROLE IF EXISTS ${name}`).catch(() => {})
  })
  const roleUrl = `postgres://${name}@${PG_HOST}:5432/${database}`
  return {
    name,
    url: roleUrl,
    client: async () => {
      const c = new pg.Client({ connectionString: roleUrl })
      await c.connect()
      clients.push(c)
      return c
    }
  }
}

/**
 * A forger's lever: a temporary table whose rows, inserted, make a trigger of the role's own call
 * changefeed_announce for `relation` with the row's `note` (a writer's way to try announcing what it did not write).
 */
export function announceLeverSql (relation: string): string {
  return `CREATE TEMP TABLE lever (note jsonb);
    CREATE FUNCTION pg_temp.pull() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
      PERFORM public_changefeed.changefeed_announce('${relation}'::regclass, NEW.note);
      RETURN NULL;
    END $f$;
    CREATE TRIGGER lever AFTER INSERT ON lever FOR EACH ROW EXECUTE FUNCTION pg_temp.pull()`
}
