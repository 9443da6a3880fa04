/**
 * Applies sql/changefeed.sql and installs the trigger on every watched table; lists the watched tables (with the
 * columns that tell what they are) when installation is left to a DBA. Several instances may start at once: an
 * advisory lock serialises the install.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { quoteIdent, type Database } from './database.js'
import { packageRoot } from '../package.js'
import { TriggerInstallError } from '../errors.js'

const INSTALL_LOCK = 'SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(\'fastify-changefeed:install\'));\n'

let script: string | null = null
export function triggerScript (): string {
  script ??= readFileSync(join(packageRoot, 'sql', 'changefeed.sql'), 'utf8')
  return script
}

/** sql/migrations/*.sql in order: what takes a database that has an earlier version of the script to this one. */
export function migrations (): Array<{ name: string, script: string }> {
  const dir = join(packageRoot, 'sql', 'migrations')
  return readdirSync(dir).filter((f) => f.endsWith('.sql')).sort().map((f) => ({ name: f.slice(0, -4), script: readFileSync(join(dir, f), 'utf8') }))
}

/** A watched table and what its columns say about it. */
export interface WatchedTable {
  schema: string
  table: string
  /** its oid: a table dropped and created again (Weasel's rebuild) has a new one */
  oid: string
  /** Weasel's copy of a table being rebuilt (sql/changefeed.sql, changefeed_rebuild_copy): no table of anyone's */
  copy: boolean
  /** the capture trigger is on it (not while it is being rebuilt) */
  triggered: boolean
  /**
   * row-level security, when the table has it: whether it applies to this role (not a superuser, nor one that
   * bypasses it, nor the owner of a table that does not force it), and the setting its policies read the tenant from
   */
  rowSecurity: { applies: boolean, setting: string | null } | null
  /** the .NET type Marten recorded (the hierarchy's base type for hierarchy tables), when it has rows */
  dotnetType: string | null
  /** Marten conjoined tenancy */
  tenantColumn: boolean
  dataColumn: boolean
  /** why the trigger could not be put on it, when installing failed */
  error: string | null
  /**
   * roles given the right to announce changes now (sql/changefeed.sql, changefeed_register): after the first
   * install, more than none means one of them may have written the table unannounced before
   */
  granted: number
}

/**
 * Applies the migrations the database has not recorded, then the script (idempotent), in one transaction. Two
 * instances starting at once may both find a migration missing: the lock runs them one after the other, and a
 * migration is idempotent, so the second run changes nothing.
 */
export async function applyTriggerScript (db: Database): Promise<void> {
  try {
    const [{ recorded }] = await db.query<{ recorded: boolean }>('SELECT to_regclass(\'changefeed_migrations\') IS NOT NULL AS recorded')
    const applied = new Set(recorded ? (await db.query<{ name: string }>('SELECT name FROM changefeed_migrations')).map((r) => r.name) : [])
    const pending = migrations().filter((m) => !applied.has(m.name)).map((m) => m.script)
    await db.execScript([INSTALL_LOCK, ...pending, triggerScript()].join('\n'))
  } catch (err) {
    throw new TriggerInstallError(db.name, (err as Error).message)
  }
}

export interface WatchRequest {
  schema: string
  /** LIKE patterns of tables watched in the schema */
  patterns: string[]
  /** tables watched whatever their name (declared entity types) */
  tables: string[]
  channel: string
  inlineTables: string[]
  outbox: boolean
  install: boolean
}

/**
 * Installs on (when `install`) and lists the tables of one schema matching the patterns, and the named tables that
 * exist; partitions are left to their partitioned table. A table the trigger could not be put on is listed with
 * its error; the others go on.
 */
export async function watchTables (db: Database, request: WatchRequest): Promise<WatchedTable[]> {
  const { schema, channel, inlineTables, outbox } = request
  const errors = new Map<string, string | null>()
  const granted = new Map<string, number>()
  if (request.install) {
    for (const pattern of request.patterns) {
      const rows = await db.query<{ tbl: string, error: string | null, granted: number }>('SELECT tbl, error, granted FROM changefeed_watch($1::text, $2::text, $3::text, $4::text[], $5::boolean)', [schema, pattern, channel, inlineTables, outbox])
      for (const row of rows) {
        errors.set(row.tbl, row.error)
        granted.set(row.tbl, row.granted)
      }
    }
  }
  const rows = await db.query<{ t: string, oid: string, columns: string[], triggered: boolean, copy: boolean, rls: boolean, applies: boolean, policy: string | null }>(
    `SELECT c.relname AS t, c.oid::text AS oid, pg_catalog.array_agg(a.attname::text) AS columns,
            EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND tg.tgname IN ('changefeed_notify', 'changefeed_partitioned')) AS triggered,
            c.relkind = 'r' AND pg_catalog.right(c.relname::text, 5) = '_temp' AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p') AS copy,
            c.relrowsecurity AS rls,
            c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
              AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user) AS applies,
            (SELECT string_agg(coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''), ' ')
             FROM pg_policy p WHERE p.polrelid = c.oid) AS policy
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND (c.relname LIKE ANY ($2::text[]) OR c.relname = ANY ($3::text[]))
     GROUP BY c.oid, c.relname ORDER BY 1`, [schema, request.patterns, [...request.tables, ...request.tables.map((t) => t + '_temp')]])
  const result: WatchedTable[] = []
  for (const { t: table, oid, columns, triggered, copy, rls, applies, policy } of rows) {
    if (!columns.includes('id')) continue
    const rowSecurity = rls ? { applies, setting: /current_setting\('([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)'/.exec(policy ?? '')?.[1] ?? null } : null
    const found = { schema, table, oid, copy, triggered, rowSecurity, tenantColumn: columns.includes('tenant_id'), dataColumn: columns.includes('data') }
    if (copy) {
      result.push({ ...found, dotnetType: null, error: null, granted: 0 })
      continue
    }
    let error = errors.get(table) ?? null
    if (request.install && !errors.has(table)) {
      // a declared table outside the patterns
      try {
        const [row] = await db.query<{ granted: number }>('SELECT changefeed_install($1::text, $2::text, $3::text, $4::boolean, $5::boolean) AS granted', [schema, table, channel, inlineTables.includes(table), outbox])
        granted.set(table, row?.granted ?? 0)
      } catch (err) {
        error = (err as Error).message
      }
    } else if (!request.install && !triggered) {
      error = 'it has no changefeed trigger (capture.installTriggers is off: apply sql/changefeed.sql and install it)'
    }
    result.push({
      ...found,
      dotnetType: columns.includes('mt_dotnet_type') ? await dotnetTypeOf(db, schema, table, columns.includes('mt_doc_type')) : null,
      error,
      granted: granted.get(table) ?? 0
    })
  }
  return result
}

/**
 * Whether the event store belongs to tenants: its streams are keyed by tenant (Marten conjoined tenancy) or its events
 * partitioned by it (tenant-partitioned events). Under single tenancy both tables have a tenant_id too, always
 * Marten's default tenant.
 */
export async function eventStoreTenanted (db: Database, store: { schema: string, table: string, streams: string }): Promise<boolean> {
  const [row] = await db.query<{ tenanted: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
       WHERE i.indrelid IN (to_regclass($1)::oid, to_regclass($2)::oid) AND i.indisprimary AND a.attname = 'tenant_id'
     ) OR coalesce(pg_get_partkeydef(to_regclass($2)::oid) ~ 'tenant_id', false) AS tenanted`,
    [`${quoteIdent(store.schema)}.${quoteIdent(store.streams)}`, `${quoteIdent(store.schema)}.${quoteIdent(store.table)}`])
  return row?.tenanted === true
}

/** Puts the trigger on Marten's table of tenant databases (sql/changefeed.sql); null when it is not there. */
export async function watchRegistry (db: Database, registry: { schema: string, table: string }, channel: string): Promise<number | null> {
  const [row] = await db.query<{ granted: number | null }>('SELECT changefeed_watch_registry($1::text, $2::text, $3::text) AS granted', [registry.schema, registry.table, channel])
  return row?.granted ?? null
}

/**
 * The .NET type Marten recorded in a row; in a hierarchy table, the base type's (mt_doc_type 'BASE'). Null when
 * there is none, or this role may not read the table (its name then comes from the table's).
 */
async function dotnetTypeOf (db: Database, schema: string, table: string, hierarchy: boolean): Promise<string | null> {
  try {
    const [row] = await db.query<{ t: string | null }>(
      `SELECT mt_dotnet_type AS t FROM ${quoteIdent(schema)}.${quoteIdent(table)}
       WHERE mt_dotnet_type IS NOT NULL${hierarchy ? ' AND mt_doc_type::text = \'BASE\'' : ''} LIMIT 1`)
    return row?.t ?? null
  } catch {
    return null
  }
}
