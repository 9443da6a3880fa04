/**
 * Applies sql/changefeed.sql and installs the trigger on every watched table; lists the watched tables when
 * installation is left to a DBA. Several instances may start at once: an advisory lock serialises the install.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { quoteIdent, type Database } from './database.js'
import { packageRoot } from '../paths.js'
import { TriggerInstallError } from '../errors.js'
import type { ResolvedOptions } from '../options.js'

const INSTALL_LOCK = 'SELECT pg_advisory_xact_lock(hashtext(\'fastify-changefeed:install\'));\n'

let script: string | null = null
export function triggerScript (): string {
  script ??= readFileSync(join(packageRoot, 'sql', 'changefeed.sql'), 'utf8')
  return script
}

export interface WatchedTable { table: string, dotnetType: string | null }

/** Applies the SQL once per database (idempotent). */
export async function applyTriggerScript (db: Database): Promise<void> {
  try {
    await db.execScript(INSTALL_LOCK + triggerScript())
  } catch (err) {
    throw new TriggerInstallError(db.name, (err as Error).message)
  }
}

/**
 * Installs on (when `install`) and lists the tables matching `capture.tables`, with the .NET type Marten
 * recorded in one of their rows (to name discovered types).
 */
export async function watchTables (db: Database, capture: ResolvedOptions['capture'], inlineTables: string[], install: boolean): Promise<WatchedTable[]> {
  const outbox = capture.mode === 'outbox'
  const tables = new Set<string>()
  for (const pattern of capture.tables) {
    const rows = install
      ? await db.query<{ t: string }>('SELECT changefeed_watch($1, $2, $3, $4, $5) AS t', [capture.schema, pattern, capture.channel, inlineTables, outbox])
      : await db.query<{ t: string }>(
        `SELECT c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname LIKE $2 ORDER BY 1`, [capture.schema, pattern])
    for (const row of rows) tables.add(row.t)
  }
  const result: WatchedTable[] = []
  for (const table of tables) result.push({ table, dotnetType: await dotnetTypeOf(db, capture.schema, table) })
  return result
}

async function dotnetTypeOf (db: Database, schema: string, table: string): Promise<string | null> {
  const [column] = await db.query<{ ok: boolean }>(
    `SELECT true AS ok FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = 'mt_dotnet_type'`,
    [schema, table])
  if (column === undefined) return null
  const [row] = await db.query<{ t: string | null }>(
    `SELECT mt_dotnet_type AS t FROM ${quoteIdent(schema)}.${quoteIdent(table)} WHERE mt_dotnet_type IS NOT NULL LIMIT 1`)
  return row?.t ?? null
}
