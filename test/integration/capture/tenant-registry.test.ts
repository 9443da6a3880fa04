/**
 * A database per tenant, found rather than declared: a type that names no database is fed by every tenant's
 * database (`databases[].tenant`); and with Marten's MasterTableTenancy (`databases[].tenantRegistry`, the
 * `mt_tenant_databases` table) a tenant's database added while the server runs is captured at once, one removed or
 * disabled no longer is — and the passwords of the connection strings in that table never reach a log line.
 */
import t from 'tap'
import pg from 'pg'
import { Writable } from 'node:stream'
import { freshDatabase, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'
import {
  addTenantDatabaseCall, deleteTenantDatabaseCall, disableTenantCall, documentSchema, storeCommand, tenantDatabasesTable,
  type DocumentOptions, type MartenCommand
} from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant: string | null, roles: string[] = []): string =>
  signHs256({ sub, roles, exp: now() + 600, ...(tenant === null ? {} : { org: { tenant } }) }, SECRET)
const auth = { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
const squad: DocumentOptions = { schema: 'public', name: 'squad', idType: 'string', marten: 9 }

async function tenantDatabase (label: string): Promise<{ url: string, run: (c: MartenCommand | string) => Promise<pg.QueryResult> }> {
  const url = await freshDatabase(t, label)
  const db = await sqlClient(t, url)
  await db.query(documentSchema(squad))
  return { url, run: async (c) => typeof c === 'string' ? await db.query(c) : await db.query(c.text, c.values) }
}

/** The connection string Marten keeps for a database (Npgsql's keywords), with a password (trust authentication ignores it). */
const npgsql = (url: string, password: string): string => {
  const u = new URL(url)
  return `Host=${u.hostname};Port=${u.port};Database=${u.pathname.slice(1)};Username=postgres;Password=${password};Pooling=true`
}

t.test('databases of tenants feed a type that names none', async (t) => {
  const red = await tenantDatabase('registry_conf_red')
  const blue = await tenantDatabase('registry_conf_blue')
  const { app, client } = await startApp(t, {
    databases: [{ name: 'red', url: red.url, tenant: 'Red' }, { name: 'blue', url: blue.url, tenant: 'Blue' }],
    entities: { Squad: { access: 'authenticated', payload: 'full' } },
    auth
  })
  t.match(app.changefeed.registry.get('Squad'), { tenancy: 'database', databases: ['red', 'blue'] })
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  await admin.subscribe('Squad', 's-1')
  await blue.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'blue' } }))
  t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Blue', payload: { from: 'blue' } })
  await red.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'red' } }))
  t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red', payload: { from: 'red' } })
})

t.test('Marten\'s table of tenant databases: tenants added and removed while running', async (t) => {
  const masterUrl = await freshDatabase(t, 'registry_master')
  const master = await sqlClient(t, masterUrl)
  const run = async (c: MartenCommand): Promise<unknown> => await master.query(c.text, c.values)
  await master.query(tenantDatabasesTable('public'))
  const red = await tenantDatabase('registry_red')
  const blue = await tenantDatabase('registry_blue')
  await run(addTenantDatabaseCall('public', 'Red', npgsql(red.url, 's3cret-red')))
  await run(addTenantDatabaseCall('public', 'Bad:One', npgsql(red.url, 's3cret-colon')))
  await run(addTenantDatabaseCall('public', 'Nowhere', 'Pooling=true;Password=s3cret-nowhere'))

  const lines: string[] = []
  const logger = { level: 'debug', stream: new Writable({ write (chunk, _enc, done) { lines.push(chunk.toString()); done() } }) }
  const { app, client } = await startApp(t, {
    databases: [{ name: 'master', url: masterUrl, tenantRegistry: true }],
    capture: { channel: 'registry:changes' },
    entities: { Squad: { access: 'authenticated', payload: 'full' } },
    auth
  }, { logger })
  const listening = (name: string): boolean => app.changefeed.stats().listeners[name]?.state === 'listening'
  t.ok(listening('master/Red'), 'a tenant of the table, captured at start')
  t.ok(lines.some((l) => l.includes('"tenant":"Bad:One"') && l.includes('"level":40')), 'a tenant id no subscription can name: a warning')
  t.ok(lines.some((l) => l.includes('"tenant":"Nowhere"') && l.includes('"level":40')), 'a connection string without a database: a warning')

  const redUser = await client(`?token=${token('r', 'Red')}`)
  t.match(await redUser.subscribe('Squad', 's-1'), { type: 'subscribed', data: { tenantId: 'Red' } })
  await red.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'red' } }))
  t.match((await redUser.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red', payload: { from: 'red' } })

  // Marten's AddDatabaseRecordAsync while the server runs
  await run(addTenantDatabaseCall('public', 'Blue', npgsql(blue.url, 's3cret-blue')))
  t.ok(await until(() => listening('master/Blue')), 'a tenant added: captured without a restart')
  const blueUser = await client(`?token=${token('b', 'Blue')}`)
  t.match(await blueUser.subscribe('Squad', 's-1'), { type: 'subscribed', data: { tenantId: 'Blue' } })
  await blue.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'blue' } }))
  t.match((await blueUser.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Blue', payload: { from: 'blue' } })

  await run(deleteTenantDatabaseCall('public', 'Red'))
  t.ok(await until(() => app.changefeed.stats().listeners['master/Red'] === undefined), 'a tenant removed: no longer captured')
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  admin.send({ type: 'subscribe', id: 'red', data: { entityType: 'Squad', entityId: 's-1', tenantId: 'Red' } })
  t.match(await admin.next((m) => m.id === 'red'), { data: { code: WireError.badRequest } }, 'a tenant without a database: its entities are no one\'s to name')
  await red.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'red', after: 'removal' } }))
  await blue.run(storeCommand(squad, 'upsert', { id: 's-1', doc: { from: 'blue', marker: true } }))
  await blueUser.next((m) => isNotification('Squad', 's-1')(m) && m.data.payload.marker === true)
  t.same(redUser.messages.filter(isNotification('Squad', 's-1')), [], 'its changes reach nobody')

  await run(disableTenantCall('public', 'Blue'))
  t.ok(await until(() => app.changefeed.stats().listeners['master/Blue'] === undefined), 'a tenant disabled: no longer captured')
  t.equal(app.changefeed.databases.size, 1, 'only the master is left')
  t.notOk(lines.some((l) => l.includes('s3cret')), 'no password of a connection string in any log line')
})
