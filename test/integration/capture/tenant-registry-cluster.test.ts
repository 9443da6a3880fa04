/**
 * Several instances on one bus: one of them listens to each database and hears its event triggers' notes (a table
 * made, a tenant's database added to Marten's table of tenant databases); it tells the others, which look again at
 * once rather than at their next re-scan (none here). A socket of a tenant added a moment ago is served by any of
 * them.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { freshDatabase, sqlClient } from '../../helpers/services.js'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { NATS_URL, REDIS_URL } from '../../helpers/brokers.js'
import { isNotification } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { addTenantDatabaseCall, documentSchema, storeCommand, tenantDatabasesTable, type DocumentOptions } from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const squad: DocumentOptions = { schema: 'public', name: 'squad', idType: 'string', marten: 9 }
const kit: DocumentOptions = { schema: 'public', name: 'kit', idType: 'string', marten: 9 }

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: a tenant and a table added while running reach every instance at once`, async (t) => {
    const masterUrl = await freshDatabase(t, `registry_cluster_master_${provider}`)
    const master = await sqlClient(t, masterUrl)
    await master.query(tenantDatabasesTable('public'))
    const redUrl = await freshDatabase(t, `registry_cluster_red_${provider}`)
    const red = await sqlClient(t, redUrl)
    await red.query(documentSchema(squad))
    const options = {
      databases: [{ name: 'master', url: masterUrl, tenantRegistry: true }],
      capture: { channel: 'registry:cluster', rescanIntervalSeconds: 0 },
      bus: { provider, url: provider === 'nats' ? NATS_URL : REDIS_URL, prefix: `registry-${randomUUID().slice(0, 8)}` },
      entities: { Squad: { access: 'authenticated' as const, payload: 'full' as const } },
      discovery: { access: 'public' as const },
      auth: { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
    }
    const a = await startApp(t, options)
    const b = await startApp(t, options)
    const leads = (app: RunningApp, database: string): boolean => app.app.changefeed.stats().listeners[database]?.state === 'listening'
    t.ok(leads(a, 'master') && !leads(b, 'master'), 'the first listens to the table of tenant databases')

    const u = new URL(redUrl)
    const call = addTenantDatabaseCall('public', 'Red', `Host=${u.hostname};Port=${u.port};Database=${u.pathname.slice(1)};Username=postgres`)
    await master.query(call.text, call.values)
    const knows = ({ app }: RunningApp): boolean => app.changefeed.registry.databaseFor(app.changefeed.registry.get('Squad')!, 'Red') !== undefined
    t.ok(await until(() => knows(a) && knows(b)), 'both know the tenant\'s database')
    const state = (app: RunningApp): string | undefined => app.app.changefeed.stats().listeners['master/Red']?.state
    t.ok(await until(() => [state(a), state(b)].sort().join() === 'following,listening'), 'one listens to it, the other follows')
    const ws = await b.client(`?token=${signHs256({ sub: 'coach', exp: now() + 600, org: { tenant: 'Red' } }, SECRET)}`)
    ws.send({ type: 'subscribe', id: 'red', data: { entityType: 'Squad', entityId: 's-1', tenantId: 'Red' } })
    t.match(await ws.next((m) => m.id === 'red'), { type: 'subscribed' }, 'a socket naming the new tenant, on the instance that did not hear the note')
    const store = storeCommand(squad, 'upsert', { id: 's-1', doc: { n: 1 } })
    await red.query(store.text, store.values)
    t.match((await ws.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red', payload: { n: 1 } }, 'gets its changes')

    await red.query(documentSchema(kit))
    t.ok(await until(() => a.app.changefeed.registry.get('kit') !== undefined && b.app.changefeed.registry.get('kit') !== undefined), 'a table made in it: a type on both')
  })
}
