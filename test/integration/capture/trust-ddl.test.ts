/**
 * The event triggers run as the owner of the changefeed objects inside the transaction of whoever ran the DDL, and
 * that transaction may stay open as long as its role likes. Nothing they do there may make another role's DDL or
 * writes wait on it: a GRANT on a temporary table of a role with only CONNECT and TEMP, or a new table of a role
 * allowed to create in the watched schema, held open, and another role's GRANT on a watched table goes through.
 */
import t from 'tap'
import type pg from 'pg'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { role, announceLeverSql } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { until } from '../../helpers/wait.js'
import { isNotification } from '../../helpers/client.js'

const url = await freshDatabase(t, 'trust_ddl')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
const { app, client } = await startApp(t, { databases: [{ name: 'ballr', url }], capture: { channel: 'trust:ddl' }, entities: { Team: { access: 'public' } } })
const intruder = await role(t, url, 'trust_ddl_intruder')
const creator = await role(t, url, 'trust_ddl_creator', ['public'])

/**
 * Runs `text` on `victim` while the attacker's transaction is open: whether it completed without ever waiting for a
 * lock (it is watched until it completes or is seen waiting). The attacker's transaction is rolled back after.
 */
async function unhindered (attacker: pg.Client, victim: pg.Client, text: string): Promise<boolean> {
  const [{ pid }] = (await victim.query('SELECT pg_backend_pid() AS pid')).rows
  let done = false
  const running = victim.query(text).then(() => { done = true })
  let waited = false
  await until(async () => {
    waited = (await sql.query('SELECT wait_event_type = \'Lock\' AS waiting FROM pg_stat_activity WHERE pid = $1', [pid])).rows[0]?.waiting === true
    return done || waited
  }, 30_000)
  await attacker.query('ROLLBACK')
  await running
  return done && !waited
}

const announces = async (name: string): Promise<boolean> =>
  (await sql.query('SELECT has_function_privilege($1, \'public_changefeed.changefeed_announce(oid, jsonb)\', \'EXECUTE\') AS ok', [name])).rows[0].ok

t.test('a GRANT on a temporary table, held open, holds up no other role\'s GRANT', async (t) => {
  const attacker = await intruder.client()
  await attacker.query('BEGIN; CREATE TEMP TABLE held (a int); GRANT SELECT ON held TO PUBLIC')
  const writer = await role(t, url, 'trust_ddl_writer')
  t.ok(await unhindered(attacker, await sqlClient(t, url), `GRANT SELECT, INSERT ON mt_doc_team TO ${writer.name}`), 'the GRANT never waited')
  t.ok(await announces(writer.name), 'and its writer may announce its changes')
})

t.test('a new watched table, its transaction held open, holds up no other role\'s GRANT', async (t) => {
  const attacker = await creator.client()
  // a new owner of a watched table: the event trigger grants it the right to announce, in its transaction
  await attacker.query('BEGIN; CREATE TABLE mt_doc_held (id text PRIMARY KEY, data jsonb)')
  const writer = await role(t, url, 'trust_ddl_late_writer')
  t.ok(await unhindered(attacker, await sqlClient(t, url), `GRANT SELECT, INSERT ON mt_doc_team TO ${writer.name}`), 'the GRANT never waited')
})

t.test('a writer\'s own trigger cannot make changefeed_announce send the event trigger\'s notes', async (t) => {
  const writer = await role(t, url, 'trust_ddl_forger')
  await sql.query(`GRANT SELECT, INSERT ON mt_doc_team TO ${writer.name}`)
  t.ok(await announces(writer.name), 'it may announce its changes')
  const forger = await writer.client()
  await forger.query(announceLeverSql('public.mt_doc_team'))
  // (a note that the table failed is kept until the next scan; 'dropped' or 'installed' would make the server scan)
  await forger.query('INSERT INTO lever VALUES ($1)', [{ ddl: 'failed', error: 'forged' }])
  // a real change after them: by the time it arrives, so have the notes
  const ws = await client()
  await ws.subscribe('Team', 't-9')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-9\', \'{}\')')
  await ws.next(isNotification('Team', 't-9'))
  t.same(app.changefeed.stats().untriggeredTables, {}, 'no table is taken for one without its trigger')
})

t.test('a copy of a watched table that another role made does not keep the table from being watched', async (t) => {
  await sql.query(martenTableSql('mt_doc_rebuilt'))
  const attacker = await creator.client()
  // named and shaped like the copy Weasel makes while it rebuilds a table, but another role's
  await attacker.query('CREATE TABLE mt_doc_rebuilt_temp (id text, data jsonb)')
  // the table made again (a migration, Weasel's rebuild by its owner)
  await sql.query(`DROP TABLE mt_doc_rebuilt; ${martenTableSql('mt_doc_rebuilt')}`)
  t.same((await sql.query('SELECT tgname FROM pg_trigger WHERE tgrelid = \'mt_doc_rebuilt\'::regclass AND tgname = \'changefeed_notify\'')).rows,
    [{ tgname: 'changefeed_notify' }], 'it has its trigger')
})
