/**
 * The test helpers' own contract with the shared PostgreSQL: a test file's database is made even while another
 * program holds a session on template1 (PostgreSQL refuses to copy a template others are connected to).
 */
import t from 'tap'
import pg from 'pg'
import { PG_HOST, freshDatabase, sqlClient } from '../helpers/services.js'

t.test('a fresh database while someone else is connected to template1', async (t) => {
  const other = new pg.Client({ connectionString: `postgres://postgres@${PG_HOST}:5432/template1` })
  await other.connect()
  t.teardown(async () => await other.end())
  const url = await freshDatabase(t, 'services')
  const sql = await sqlClient(t, url)
  t.same((await sql.query('SELECT current_database() AS name')).rows, [{ name: new URL(url).pathname.slice(1) }])
})
