/**
 * A database the plugin cannot use stops the start with CHANGEFEED_DATABASE_UNAVAILABLE, naming the database, the
 * server (host:port) and what it refused (the database, the role), never the password: whether the plugin installs
 * its triggers or not. Against the real PostgreSQL, and a port where nothing listens.
 */
import t from 'tap'
import Fastify from 'fastify'
import changefeed from '../../../lib/index.js'
import { freePort } from '../../helpers/brokers.js'
import { PG_HOST, freshDatabase } from '../../helpers/services.js'

const PASSWORD = 'pw-not-to-be-shown'

async function start (url: string, installTriggers = true): Promise<Error & { code?: string }> {
  const app = Fastify({ logger: false })
  t.teardown(async () => await app.close())
  try {
    await app.register(changefeed, { databases: [{ name: 'ballr', url }], capture: { installTriggers }, entities: { Team: { access: 'public' } } }).ready()
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('the start did not fail')
}

t.test('nothing listens on the port: the database and host:port, never the password', async (t) => {
  const port = await freePort()
  for (const installTriggers of [true, false]) {
    const err = await start(`postgres://postgres:${PASSWORD}@127.0.0.1:${port}/ballr`, installTriggers)
    t.equal(err.code, 'CHANGEFEED_DATABASE_UNAVAILABLE', `installTriggers ${installTriggers}`)
    t.ok(err.message.includes('"ballr"') && err.message.includes(`127.0.0.1:${port}`), `names the database and the server: ${err.message}`)
    t.notOk(err.message.includes(PASSWORD), 'not the password')
  }
})

t.test('a database or a role the server does not have says which', async (t) => {
  const existing = await freshDatabase(t, 'dberrors')
  const missingDatabase = await start(existing.replace(/\/[^/]+$/, '/cf_no_such_database'))
  t.equal(missingDatabase.code, 'CHANGEFEED_DATABASE_UNAVAILABLE')
  t.ok(missingDatabase.message.includes('cf_no_such_database') && missingDatabase.message.includes('3D000'), missingDatabase.message)
  const missingRole = await start(existing.replace('postgres@', `cf_no_such_role:${PASSWORD}@`))
  t.equal(missingRole.code, 'CHANGEFEED_DATABASE_UNAVAILABLE')
  t.ok(missingRole.message.includes('cf_no_such_role') && missingRole.message.includes(`${PG_HOST}:5432`), missingRole.message)
  t.notOk(missingRole.message.includes(PASSWORD), 'not the password')
})
