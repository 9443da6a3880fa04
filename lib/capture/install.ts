/**
 * Applies sql/changefeed.sql and installs the trigger on every watched table; lists the watched tables (with the
 * columns that tell what they are) when installation is left to a DBA. Several instances may start at once: an
 * advisory lock serialises the install.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { quoteIdent, type Database } from './database.js'
import { packageRoot } from '../paths.js'
import { TriggerInstallError } from '../errors.js'

const INSTALL_LOCK = 'SELECT pg_advisory_xact_lock(hashtext(\'fastify-changefeed:install\'));\n'

let script: string | null = null
export function triggerScript (): string {
  script ??= readFileSync(join(packageRoot, 'sql', 'changefeed.sql'), 'utf8')
  return script
}

/** A watched table and what its columns say about it. */
export interface WatchedTable {
  schema: string
  table: string
  /** the .NET type Marten recorded (the hierarchy's base type for hierarchy tables), when it has rows */
  dotnetType: string | null
  /** Marten conjoined tenancy */
  tenantColumn: boolean
  dataColumn: boolean
  /** why the trigger could not be put on it, when installing failed */
  error: string | null
}

/** Applies the SQL once per database (idempotent). */
export async function applyTriggerScript (db: Database): Promise<void> {
  try {
    await db.execScript(INSTALL_LOCK + triggerScript())
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
  if (request.install) {
    for (const pattern of request.patterns) {
      const rows = await db.query<{ tbl: string, error: string | null }>('SELECT tbl, error FROM changefeed_watch($1, $2, $3, $4, $5)', [schema, pattern, channel, inlineTables, outbox])
      for (const row of rows) errors.set(row.tbl, row.error)
    }
  }
  const rows = await db.query<{ t: string, columns: string[], triggered: boolean }>(
    `SELECT c.relname AS t, array_agg(a.attname::text) AS columns,
            EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND tg.tgname IN ('changefeed_notify', 'changefeed_partitioned')) AS triggered
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND (c.relname LIKE ANY ($2::text[]) OR c.relname = ANY ($3::text[]))
     GROUP BY c.oid, c.relname ORDER BY 2`, [schema, request.patterns, request.tables])
  const result: WatchedTable[] = []
  for (const { t: table, columns, triggered } of rows) {
    if (!columns.includes('id')) continue
    let error = errors.get(table) ?? null
    if (request.install && !errors.has(table)) {
      // a declared table outside the patterns
      try {
        await db.query('SELECT changefeed_install($1, $2, $3, $4, $5)', [schema, table, channel, inlineTables.includes(table), outbox])
      } catch (err) {
        error = (err as Error).message
      }
    } else if (!request.install && !triggered) {
      error = 'it has no changefeed trigger (capture.installTriggers is off: apply sql/changefeed.sql and install it)'
    }
    result.push({
      schema,
      table,
      dotnetType: columns.includes('mt_dotnet_type') ? await dotnetTypeOf(db, schema, table, columns.includes('mt_doc_type')) : null,
      tenantColumn: columns.includes('tenant_id'),
      dataColumn: columns.includes('data'),
      error
    })
  }
  return result
}

/**
 * The .NET type Marten recorded in a row; in a hierarchy table, the base type's (mt_doc_type 'BASE'). Null when
 * there is none, or this role may not read the table (its name then comes from the table's).
 */
async function dotnetTypeOf (db: Database, schema: string, table: string, hierarchy: boolean): Promise<string | null> {
  try {
    const [row] = await db.query<{ t: string | null }>(
      `SELECT mt_dotnet_type AS t FROM ${quoteIdent(schema)}.${quoteIdent(table)}
       WHERE mt_dotnet_type IS NOT NULL${hierarchy ? ' AND mt_doc_type = \'BASE\'' : ''} LIMIT 1`)
    return row?.t ?? null
  } catch {
    return null
  }
}
