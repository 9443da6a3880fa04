/**
 * A rebuild's end seen by the scan, step by step (the scan is run by hand here, where a server runs it on each
 * note): a table made and triggered in one transaction is no change, and its mark is spent on that table only. A
 * rebuild run statement by statement (writes between the statements reached nobody) is a change, and its type's
 * watchers resync, whichever rebuild no scan saw came before or after it.
 */
import t from 'tap'
import pg from 'pg'
import { pino } from 'pino'
import { freshDatabase, sqlClient } from '../../helpers/services.js'
import { until } from '../../helpers/wait.js'
import { documentSchema, documentTable, rebuildStatements, type DocumentOptions } from '../../fixtures/marten/index.js'
import { resolveOptions } from '../../../lib/options.js'
import { EntityRegistry } from '../../../lib/entities.js'
import { PgDatabase } from '../../../lib/capture/database.js'
import { WatchedTables } from '../../../lib/capture/tables.js'
import { isDdlNote, type DdlNote } from '../../../lib/capture/payloads.js'

const url = await freshDatabase(t, 'rebuild_marks')
const sql = await sqlClient(t, url)
const team: DocumentOptions = { schema: 'public', name: 'team', idType: 'string', marten: 9 }
await sql.query(documentSchema(team))

const channel = 'rebuild:marks'
const options = resolveOptions({ databases: [{ name: 'main', url }], capture: { channel }, entities: { Team: { access: 'public' } } })
const pool = new pg.Pool({ connectionString: url, max: 2 })
t.teardown(async () => await pool.end())
const db = new PgDatabase('main', pool, url)
const rebuilt: string[][] = []
const tables = new WatchedTables(new EntityRegistry(options), options, pino({ level: 'silent' }), {
  onUnannounced: () => {},
  onTypes: (_database, types) => { rebuilt.push(types) }
})
await tables.prepare(db, { strict: true })

// the event triggers' notes, as the listener passes them on (the signature is the first 64 characters)
const notes: DdlNote[] = []
const listener = await sqlClient(t, url)
listener.on('notification', (n) => {
  const note: unknown = JSON.parse(n.payload?.slice(64) ?? 'null')
  if (isDdlNote(note)) notes.push(note)
})
await listener.query(`LISTEN "${channel}"`)
/** The note of a rebuild's end: the server marks the table it names when it was made in that very transaction. */
async function rebuildEnds ({ named = true } = {}): Promise<DdlNote> {
  let note: DdlNote | undefined
  await until(() => (note = notes.find((n) => n.ddl === 'installed' && n.fresh !== undefined)) !== undefined)
  notes.length = 0
  if (note?.fresh !== undefined) tables.rebuilt('main', note.s, note.t, note.fresh && named ? note.oid ?? null : null)
  return note as DdlNote
}

const columns = ['id', 'data', 'mt_last_modified', 'mt_version', 'mt_dotnet_type']
const statements = rebuildStatements(team, documentTable(team), columns)

t.test('a rebuild in one transaction, scanned: no change', async (t) => {
  await sql.query(`BEGIN;\n${statements.join('\n')}\nCOMMIT;`)
  const note = await rebuildEnds()
  t.match(note, { fresh: true, oid: /^\d+$/ }, 'its note names the table made')
  await tables.scan(db)
  t.same(rebuilt, [], 'no resync')
})

t.test('a rebuild in one transaction that no scan saw before the next, statement by statement: one resync', async (t) => {
  await sql.query(`BEGIN;\n${statements.join('\n')}\nCOMMIT;`)
  t.equal((await rebuildEnds()).fresh, true, 'the first one is marked')
  for (const statement of statements) await sql.query(statement)
  t.equal((await rebuildEnds()).fresh, false, 'the second is not')
  await tables.scan(db)
  t.same(rebuilt, [['Team']], 'the mark of the first is not taken for the second: its watchers resync')
  await tables.scan(db)
  t.same(rebuilt, [['Team']], 'once')
})

t.test('a note of a rebuild in one transaction that names no table (an earlier script)', async (t) => {
  rebuilt.length = 0
  await sql.query(`BEGIN;\n${statements.join('\n')}\nCOMMIT;`)
  t.equal((await rebuildEnds({ named: false })).fresh, true, 'made in that transaction')
  await tables.scan(db)
  t.same(rebuilt, [['Team']], 'a note that names no table (an earlier script) marks none: its watchers resync')
})

t.test('a rebuild statement by statement, then one in one transaction, before any scan: one resync', async (t) => {
  rebuilt.length = 0
  for (const statement of statements) await sql.query(statement)
  t.equal((await rebuildEnds()).fresh, false, 'the first is not marked')
  await sql.query(`BEGIN;\n${statements.join('\n')}\nCOMMIT;`)
  t.equal((await rebuildEnds()).fresh, true, 'the second is')
  await tables.scan(db)
  t.same(rebuilt, [['Team']], 'the second\'s mark does not excuse the first: its watchers resync')
  await sql.query(`BEGIN;\n${statements.join('\n')}\nCOMMIT;`)
  await rebuildEnds()
  await tables.scan(db)
  t.same(rebuilt, [['Team']], 'and a mark counts again once a scan saw the table')
})
