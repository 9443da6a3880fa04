/**
 * Marten's document storage as Marten really writes it (test/fixtures/marten), with the product installed by a
 * superuser and Marten running as its own application role (not superuser, CREATE on the schema): every table
 * shape and partition the role creates succeeds and is picked up by itself; string, Guid, int and HiLo ids; the
 * upsert/insert/update/overwrite functions; soft delete and undo; partitions added while the server runs;
 * hierarchies discovered under their base type; the server restarting with partitions present.
 */
import t from 'tap'
import pg from 'pg'
import { randomUUID } from 'node:crypto'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import {
  documentSchema, hardDeleteSql, hiloId, hiloTable, nextHiCall, softDeleteSql, tenantPartition, undoDeleteSql, upsertCall,
  type DocumentOptions, type MartenCommand
} from '../../fixtures/marten/index.js'

const url = await freshDatabase(t, 'marten_docs')
const marten = await role(t, url, 'marten_docs_app', ['public'])
const db = await marten.client()
const run = async (command: MartenCommand | string): Promise<pg.QueryResult> =>
  typeof command === 'string' ? await db.query(command) : await db.query(command.text, command.values)

const shapes: Record<string, DocumentOptions> = {
  team: { schema: 'public', name: 'team', idType: 'string' },
  scoreboard: { schema: 'public', name: 'scoreboard', idType: 'guid', softDelete: true, optimisticConcurrency: true },
  fixture: { schema: 'public', name: 'fixture', idType: 'int' },
  player: { schema: 'public', name: 'player', idType: 'long' },
  squad: { schema: 'public', name: 'squad', idType: 'string', tenancy: 'conjoined', softDelete: true },
  roster: { schema: 'public', name: 'roster', idType: 'string', tenancy: 'partitioned', partitions: { red: 'Red' } },
  lineup: { schema: 'public', name: 'lineup', idType: 'guid', tenancy: 'partitioned', primaryKey: 'tenant_id,id', marten: 7, defaultPartition: false, partitions: { red: 'Red' } }
}

const options = {
  databases: [{ name: 'ballr', url }],
  capture: { channel: 'ballr:db_changes', rescanIntervalSeconds: 0 },
  entities: {
    Team: { access: 'public' as const },
    Scoreboard: { access: 'public' as const, payload: 'full' as const },
    Fixture: { access: 'public' as const, payload: 'full' as const },
    Player: { access: 'public' as const },
    Squad: { access: 'public' as const, payload: 'full' as const },
    Roster: { access: 'public' as const, payload: 'full' as const },
    Lineup: { access: 'public' as const }
  },
  discovery: { access: 'public' as const }
}
// the product first, as a deployment would start it: Marten creates its tables on first use, later
const { app, client } = await startApp(t, options)

t.test('Marten\'s application role creates every kind of document table and partition with the product installed', async (t) => {
  for (const [name, shape] of Object.entries(shapes)) {
    await t.resolves(run(documentSchema(shape)), `mt_doc_${name}`)
  }
  await t.resolves(run(hiloTable('public')), 'mt_hilo')
  await t.resolves(run(tenantPartition({ schema: 'public', name: 'roster', tenantId: 'Blue' })), 'a partition of a watched table')
  await t.resolves(run('CREATE TABLE mt_doc_unrelated AS SELECT 1 AS id, \'{}\'::jsonb AS data'), 'CREATE TABLE AS')
  const { rows } = await run(`SELECT c.relname, t.tgparentid <> 0 AS cloned FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE t.tgname IN ('changefeed_notify', 'changefeed_partitioned') ORDER BY 1`)
  const triggered = Object.fromEntries(rows.map((r) => [r.relname, r.cloned]))
  for (const name of Object.keys(shapes)) t.equal(triggered[`mt_doc_${name}`], false, `mt_doc_${name} has the trigger`)
  t.equal(triggered.mt_doc_roster_red, true, 'a partition has its table\'s trigger, cloned')
  t.equal(triggered.mt_doc_roster_blue, true, 'so has a partition added later')
  // a table of its own, triggered, then attached as a partition (and detached again): DDL the product must not break
  await t.resolves(run('CREATE TABLE mt_doc_roster_purple (LIKE mt_doc_roster INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'))
  await t.resolves(run('ALTER TABLE mt_doc_roster ATTACH PARTITION mt_doc_roster_purple FOR VALUES IN (\'Purple\')'), 'ATTACH PARTITION')
  await t.resolves(run('ALTER TABLE mt_doc_roster DETACH PARTITION mt_doc_roster_purple'), 'DETACH PARTITION')
  const own = await run('SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = \'mt_doc_roster_purple\'::regclass AND tgname = \'changefeed_notify\' AND tgparentid = 0')
  t.equal(own.rows[0].n, 1, 'a detached table has its own trigger again')
  await run('ALTER TABLE mt_doc_roster ATTACH PARTITION mt_doc_roster_purple FOR VALUES IN (\'Purple\')')
  // the event trigger tells the server about each table: the types are known without a re-scan
  t.ok(await until(() => app.changefeed.registry.get('Squad')?.tenancy === 'conjoined' && app.changefeed.registry.get('Roster')?.tenancy === 'conjoined'),
    'conjoined tenancy is recognised from the tables Marten created')
  t.equal(app.changefeed.registry.get('Team')?.tenancy, 'none')
})

t.test('changes made through Marten\'s functions reach watchers, whatever the id type', async (t) => {
  const ws = await client()
  const guid = randomUUID()
  const [{ mt_get_next_hi: hi }] = (await run(nextHiCall('public', 'player'))).rows as Array<{ mt_get_next_hi: number }>
  const playerId = hiloId(Number(hi), 7)
  for (const [type, id] of [['Team', 'team-1'], ['Scoreboard', guid], ['Fixture', '42'], ['Player', String(playerId)]]) {
    t.equal((await ws.subscribe(type, id)).type, 'subscribed', `${type} ${id}`)
  }
  await run(upsertCall(shapes.team, 'upsert', { id: 'team-1', doc: { name: 'Sharks' } }))
  t.match((await ws.next(isNotification('Team', 'team-1'))).data, { changeType: 'created', payloadType: 'minimal' })
  const first = upsertCall(shapes.scoreboard, 'insert', { id: guid, doc: { home: 0, away: 0 } })
  await run(first)
  t.match((await ws.next(isNotification('Scoreboard', guid))).data, { changeType: 'created', payload: { home: 0 }, version: first.version })
  const second = upsertCall(shapes.scoreboard, 'update', { id: guid, doc: { home: 5, away: 0 }, currentVersion: first.version })
  await run(second)
  t.match((await ws.next(isNotification('Scoreboard', guid))).data, { changeType: 'updated', payload: { home: 5 }, version: second.version })
  await run(upsertCall(shapes.scoreboard, 'overwrite', { id: guid, doc: { home: 7, away: 3 } }))
  t.match((await ws.next(isNotification('Scoreboard', guid))).data, { changeType: 'updated', payload: { home: 7, away: 3 } })
  await run(upsertCall(shapes.fixture, 'upsert', { id: 42, doc: { venue: 'North Oval' } }))
  t.match((await ws.next(isNotification('Fixture', '42'))).data, { changeType: 'created', payload: { venue: 'North Oval' } })
  await run(upsertCall(shapes.player, 'upsert', { id: playerId, doc: { name: 'A. Tane' } }))
  t.match((await ws.next(isNotification('Player', String(playerId)))).data, { changeType: 'created' })
})

t.test('a Marten soft delete is deleted, its undo created, and a write to a deleted document is not news', async (t) => {
  const ws = await client()
  const id = randomUUID()
  await ws.subscribe('Scoreboard', id)
  await run(upsertCall(shapes.scoreboard, 'upsert', { id, doc: { home: 1 } }))
  t.equal((await ws.next(isNotification('Scoreboard', id))).data.changeType, 'created')
  await run(softDeleteSql(shapes.scoreboard, id))
  t.equal((await ws.next(isNotification('Scoreboard', id))).data.changeType, 'deleted')
  // Marten's upsert leaves mt_deleted as it is: the document stays deleted, and nobody is told of a change
  await run(upsertCall(shapes.scoreboard, 'overwrite', { id, doc: { home: 2 } }))
  await run(undoDeleteSql(shapes.scoreboard, id))
  const back = await ws.next(isNotification('Scoreboard', id))
  t.match(back.data, { changeType: 'created', payload: { home: 2 } }, 'the undo is next; the write in between said nothing')
})

t.test('a hard delete of a soft-deleted document is not news: its watchers were told it was deleted', async (t) => {
  const ws = await client()
  const id = randomUUID()
  await ws.subscribe('Scoreboard', id)
  await run(upsertCall(shapes.scoreboard, 'upsert', { id, doc: { home: 1 } }))
  t.equal((await ws.next(isNotification('Scoreboard', id))).data.changeType, 'created')
  await run(softDeleteSql(shapes.scoreboard, id))
  t.equal((await ws.next(isNotification('Scoreboard', id))).data.changeType, 'deleted')
  await run(hardDeleteSql(shapes.scoreboard, id))
  await run(upsertCall(shapes.scoreboard, 'upsert', { id, doc: { home: 3 } }))
  t.match((await ws.next(isNotification('Scoreboard', id))).data, { changeType: 'created', payload: { home: 3 } }, 'the next is the new document: no second deleted')
  await run(hardDeleteSql(shapes.scoreboard, id))
  t.equal((await ws.next(isNotification('Scoreboard', id))).data.changeType, 'deleted', 'a hard delete of a live document is deleted')
})

t.test('partitioned tenancy: a change in a partition is its table\'s, tagged with the tenant; partitions added at run time need nothing', async (t) => {
  const ws = await client()
  t.equal((await ws.subscribe('Roster', 'r-1')).type, 'subscribed')
  await run(upsertCall(shapes.roster, 'upsert', { id: 'r-1', doc: { players: 23 }, tenantId: 'Red' }))
  t.match((await ws.next(isNotification('Roster', 'r-1'))).data, { tenantId: 'Red', payload: { players: 23 } })
  await run(tenantPartition({ schema: 'public', name: 'roster', tenantId: 'Green' }))
  await run(upsertCall(shapes.roster, 'upsert', { id: 'r-1', doc: { players: 15 }, tenantId: 'Green' }))
  t.match((await ws.next(isNotification('Roster', 'r-1'))).data, { tenantId: 'Green', payload: { players: 15 }, changeType: 'created' }, 'another tenant\'s r-1 is another entity')
  await run(upsertCall(shapes.roster, 'upsert', { id: 'r-1', doc: { players: 9 }, tenantId: 'Purple' }))
  t.match((await ws.next(isNotification('Roster', 'r-1'))).data, { tenantId: 'Purple', payload: { players: 9 } }, 'an attached partition is its table\'s: one notification')
  await run(tenantPartition({ schema: 'public', name: 'lineup', tenantId: 'Blue' }))
  const lineup = randomUUID()
  await ws.subscribe('Lineup', lineup)
  await run(upsertCall(shapes.lineup, 'upsert', { id: lineup, doc: {}, tenantId: 'Blue' }))
  t.match((await ws.next(isNotification('Lineup', lineup))).data, { tenantId: 'Blue' }, 'Marten 7\'s tenant-first layout too')
  t.same(app.changefeed.stats().dropped, {}, 'nothing was dropped')
})

t.test('a hierarchy table is discovered under its base type, whichever row comes first', async (t) => {
  const animal: DocumentOptions = { schema: 'public', name: 'animal', idType: 'string', hierarchy: true, dotnetType: 'Zoo.Animal' }
  await run('BEGIN')
  await run(documentSchema(animal))
  await run(upsertCall(animal, 'upsert', { id: 'rex', doc: { name: 'Rex' }, docType: 'dog', dotnetType: 'Zoo.Dog' }))
  await run(upsertCall(animal, 'upsert', { id: 'generic', doc: {}, docType: 'BASE', dotnetType: 'Zoo.Animal' }))
  await run('COMMIT')
  await app.changefeed.rescan()
  t.ok(app.changefeed.registry.get('Animal'), 'named after the base type')
  t.notOk(app.changefeed.registry.get('Dog'), 'not after the sub-class of its first row')
})

t.test('the server restarts with partitions present', async (t) => {
  const second = await startApp(t, options)
  const ws = await second.client()
  t.equal((await ws.subscribe('Roster', 'r-2')).type, 'subscribed')
  await run(upsertCall(shapes.roster, 'upsert', { id: 'r-2', doc: {}, tenantId: 'Blue' }))
  t.match((await ws.next(isNotification('Roster', 'r-2'))).data, { tenantId: 'Blue' })
})
