/**
 * Marten 9's documents (test/fixtures/marten: documents9.ts), as its own application role writes them with the product
 * installed by a superuser: writes without functions, soft deletes with soft-delete partitioning; TRUNCATE of a
 * document table (DeleteDocumentsByType, DeleteAllDocuments) and of one tenant's partition, which reaches the type's
 * watchers (of that tenant) and feeds as one `resync` (reason `truncated`); Weasel's partition rebuild, whose `_temp`
 * copy is never a type however the re-scans fall (repeated until one meets it) and whose copied rows are no change;
 * a dropped table's discovered type goes away, a declared one stays.
 */
import t from 'tap'
import pg from 'pg'
import { Writable } from 'node:stream'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type Frame, type TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import {
  deleteAllDocumentsSql, deleteDocumentsByTypeSql, documentSchema, documentTable, rebuildStatements, softDeleteSql, storeCommand,
  tenantPartition, type DocumentOptions, type MartenCommand
} from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant: string | null, roles: string[] = []): string =>
  signHs256({ sub, roles, exp: now() + 600, ...(tenant === null ? {} : { org: { tenant } }) }, SECRET)

const url = await freshDatabase(t, 'marten9_docs')
const marten = await role(t, url, 'marten9_docs_app', ['public'])
const db = await marten.client()
const run = async (command: MartenCommand | string): Promise<pg.QueryResult> =>
  typeof command === 'string' ? await db.query(command) : await db.query(command.text, command.values)

const team: DocumentOptions = { schema: 'public', name: 'team', idType: 'string', marten: 9 }
const match: DocumentOptions = { schema: 'public', name: 'match', idType: 'string', marten: 9, softDeletePartitioning: true }
const roster: DocumentOptions = { schema: 'public', name: 'roster', idType: 'string', marten: 9, tenancy: 'partitioned', partitions: { red: 'Red', blue: 'Blue' } }
// no mt_dotnet_type (DisableInformationalFields): a discovered type is named after its table, and so would its copy be
const fixture: DocumentOptions = { schema: 'public', name: 'fixture', idType: 'string', marten: 9, softDelete: true, informationalFields: false }
for (const shape of [team, match, roster, fixture]) await run(documentSchema(shape))

const lines: string[] = []
const logger = { level: 'debug', stream: new Writable({ write (chunk, _enc, done) { lines.push(chunk.toString()); done() } }) }
const { app, client } = await startApp(t, {
  databases: [{ name: 'ballr', url }],
  capture: { channel: 'marten9:docs', rescanIntervalSeconds: 0 },
  entities: {
    Team: { access: 'public', payload: 'full', feed: true },
    Match: { access: 'public', payload: 'full' },
    Roster: { access: 'authenticated', feed: true }
  },
  discovery: { access: 'public' },
  auth: { anonymous: true, jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
}, { logger })

const resyncOf = (ws: TestClient, entityType: string, entityId: string) => async (): Promise<Frame> =>
  await ws.next((m) => m.type === 'resync' && m.data.entityType === entityType && m.data.entityId === entityId)

t.test('written without functions: store, insert, update, soft delete, store again; with soft-delete partitioning', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 't-1')
  await ws.subscribe('Match', 'm-1')
  await run(storeCommand(team, 'upsert', { id: 't-1', doc: { name: 'Reds' } }))
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created', payload: { name: 'Reds' } })
  await run(storeCommand(team, 'update', { id: 't-1', doc: { name: 'Blues' } }))
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'updated', payload: { name: 'Blues' } })
  await run(storeCommand(match, 'insert', { id: 'm-1', doc: { minute: 1 } }))
  t.match((await ws.next(isNotification('Match', 'm-1'))).data, { changeType: 'created' })
  // the row moves to the _deleted partition: a DELETE there, an INSERT of a deleted row here
  await run(softDeleteSql(match, 'm-1'))
  t.match((await ws.next(isNotification('Match', 'm-1'))).data, { changeType: 'deleted' })
  await run(storeCommand(match, 'upsert', { id: 'm-1', doc: { minute: 2 } }))
  t.match((await ws.next(isNotification('Match', 'm-1'))).data, { changeType: 'created', payload: { minute: 2 } }, 'storing a deleted document undeletes it')
})

t.test('TRUNCATE of a document table: its watchers and feeds resync, no one else\'s', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 't-1')
  await ws.subscribe('Team', '*')
  await ws.subscribe('Match', 'm-1')
  await run(deleteDocumentsByTypeSql(team))
  t.match(await resyncOf(ws, 'Team', 't-1')(), { data: { reason: 'truncated' } }, 'DeleteDocumentsByType: the entity')
  t.match(await resyncOf(ws, 'Team', '*')(), { data: { reason: 'truncated' } }, 'and the feed')
  await run(storeCommand(match, 'upsert', { id: 'm-1', doc: { minute: 3 } }))
  await ws.next(isNotification('Match', 'm-1'))
  t.same(ws.messages.filter((m) => m.type === 'resync'), [], 'nothing for the watchers of another type')

  await run(storeCommand(team, 'upsert', { id: 't-1', doc: { name: 'back' } }))
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created' }, 'the table is watched as before')
  // Marten's DeleteAllDocuments: every mt_ table and partition, one TRUNCATE each, in one command
  const { rows } = await db.query(`SELECT table_schema AS schema, table_name AS table FROM information_schema.tables
    WHERE table_name LIKE 'mt\\_%' AND table_schema = 'public'`)
  await run(deleteAllDocumentsSql(rows as Array<{ schema: string, table: string }>))
  t.match(await resyncOf(ws, 'Team', 't-1')(), { data: { reason: 'truncated' } })
  t.match(await resyncOf(ws, 'Match', 'm-1')(), { data: { reason: 'truncated' } }, 'DeleteAllDocuments: every type, its partitions\' TRUNCATEs too')
})

t.test('TRUNCATE of one tenant\'s partition: that tenant\'s watchers, and those of every tenant, resync', async (t) => {
  const red = await client(`?token=${token('r', 'Red')}`)
  const blue = await client(`?token=${token('b', 'Blue')}`)
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  t.match(await red.subscribe('Roster', 'r-1'), { data: { tenantId: 'Red' } })
  t.match(await blue.subscribe('Roster', 'r-1'), { data: { tenantId: 'Blue' } })
  await admin.subscribe('Roster', 'r-1')
  await admin.subscribe('Roster', '*')
  await run('TRUNCATE public.mt_doc_roster_red')
  t.match(await resyncOf(red, 'Roster', 'r-1')(), { data: { reason: 'truncated', tenantId: 'Red' } }, 'Red\'s')
  t.match(await resyncOf(admin, 'Roster', 'r-1')(), { data: { reason: 'truncated' } }, 'every tenant\'s entity')
  t.match(await resyncOf(admin, 'Roster', '*')(), { data: { reason: 'truncated' } }, 'every tenant\'s feed')
  await run(storeCommand(roster, 'upsert', { id: 'r-1', doc: {}, tenantId: 'Blue' }))
  await blue.next(isNotification('Roster', 'r-1'))
  t.same(blue.messages.filter((m) => m.type === 'resync'), [], 'Blue\'s watchers lost nothing')

  await run(tenantPartition({ schema: 'public', name: 'roster', tenantId: 'Green', marten: 9 }))
  const green = await client(`?token=${token('g', 'Green')}`)
  await green.subscribe('Roster', 'r-1')
  await run('TRUNCATE public.mt_doc_roster_green')
  t.match(await resyncOf(green, 'Roster', 'r-1')(), { data: { tenantId: 'Green' } }, 'a partition made while running has its TRUNCATE trigger')
  await run('TRUNCATE public.mt_doc_roster')
  t.match(await resyncOf(blue, 'Roster', 'r-1')(), { data: { reason: 'truncated' } }, 'the whole table: every tenant')
})

t.test('a rebuild racing discovery: its copy is no type, its type stays, its rows are no change', async (t) => {
  // discovered, not declared: a scan that met the copy would have registered it as one more
  await run(storeCommand(fixture, 'upsert', { id: 'f-1', doc: { n: 1 } }))
  t.ok(await until(async () => { await app.changefeed.rescan(); return app.changefeed.registry.get('fixture') !== undefined }), 'discovered')
  const ws = await client()
  await ws.subscribe('fixture', 'f-1')
  const partitioned = { ...fixture, softDeletePartitioning: true }
  const columns = ['id', 'data', 'mt_deleted', 'mt_deleted_at']
  const met = (): boolean => lines.some((l) => l.includes('tables being rebuilt'))
  let rebuilds = 0
  let shape = fixture
  while (!met() && rebuilds < 30) {
    rebuilds++
    // each statement commits on its own, as the migrator's commands do; the DDL notes and re-scans fall between them
    shape = shape === fixture ? partitioned : fixture
    for (const statement of rebuildStatements(fixture, documentTable(shape), columns)) {
      await run(statement)
      void app.changefeed.rescan().catch(() => {})
      t.equal(app.changefeed.registry.get('fixture_temp'), undefined, `no type of the copy (rebuild ${rebuilds})`)
      t.not(app.changefeed.registry.get('fixture'), undefined, `the type stays (rebuild ${rebuilds})`)
    }
  }
  t.ok(met(), `a scan met a table being rebuilt (after ${rebuilds} rebuilds)`)
  await app.changefeed.rescan()
  t.equal(app.changefeed.registry.get('fixture_temp'), undefined)
  t.same(ws.messages.filter((m) => m.type === 'notification'), [], 'the rows copied back were announced to nobody')
  t.ok(ws.messages.every((m) => m.type === 'resync' && m.data.reason === 'rebuilt'), 'at most a resync: the table was made again')
  ws.messages.length = 0
  await run(storeCommand(shape, 'upsert', { id: 'f-1', doc: { n: 2 } }))
  t.match((await ws.next(isNotification('fixture', 'f-1'))).data, { changeType: 'updated' }, 'watched again after the rebuild')
})

t.test('a rebuild in one transaction is no change at all; run statement by statement, one resync', async (t) => {
  const ws = await client()
  const routed = app.changefeed.stats().router.changes
  for (const id of ['t-1', 't-2', 't-3']) await run(storeCommand(team, 'upsert', { id, doc: { id } }))
  // routed (to nobody) before the subscribes: under load a NOTIFY may come after them
  t.ok(await until(() => app.changefeed.stats().router.changes >= routed + 3), 'the stores are routed')
  for (const id of ['t-1', 't-2', 't-3']) await ws.subscribe('Team', id)
  const columns = ['id', 'data', 'mt_last_modified', 'mt_version', 'mt_dotnet_type']
  await run(`BEGIN;\n${rebuildStatements(team, documentTable(team), columns).join('\n')}\nCOMMIT;`)
  await run(storeCommand(team, 'upsert', { id: 't-1', doc: { after: true } }))
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'updated', payload: { after: true } }, 'the first change after it is a real one')
  t.same(ws.messages.filter((m) => m.type === 'notification' || m.type === 'resync'), [], 'nothing before it: no "created" per row, no resync')

  for (const statement of rebuildStatements(team, documentTable(team), columns)) await run(statement)
  t.match(await resyncOf(ws, 'Team', 't-2')(), { data: { reason: 'rebuilt' } }, 'its watchers refetch once: a write between its statements reached nobody')
  await run(storeCommand(team, 'upsert', { id: 't-2', doc: { after: 2 } }))
  await ws.next(isNotification('Team', 't-2'))
  t.same(ws.messages.filter((m) => m.type === 'notification'), [], 'and no row was announced as created')
})

t.test('a dropped table: its discovered type goes away, a declared one stays (with a warning)', async (t) => {
  await run(documentSchema({ schema: 'public', name: 'gone', idType: 'string', marten: 9 }))
  t.ok(await until(() => app.changefeed.registry.get('gone') !== undefined), 'discovered at once (the event trigger\'s note)')
  await run('DROP TABLE public.mt_doc_gone')
  t.ok(await until(() => app.changefeed.registry.get('gone') === undefined), 'gone with its table')
  await run('DROP TABLE public.mt_doc_match CASCADE')
  t.ok(await until(() => lines.some((l) => l.includes('"entityType":"Match"') && l.includes('does not exist'))), 'a declared type\'s table: warned about')
  t.not(app.changefeed.registry.get('Match'), undefined, 'the declared type stays')
})
