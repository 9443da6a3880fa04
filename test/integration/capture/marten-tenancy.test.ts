/**
 * Tenancy end to end, on Marten's own tables: conjoined tenancy (tenant_id, primary key (tenant_id, id)) and a
 * database per tenant. Two tenants' entities with the same id never see each other's changes or documents (a
 * 30 KB document is read back within its tenant); a signed-in user watches its own tenant (token claim), only an
 * admin crosses tenants; anonymous watchers of a public tenanted type see every tenant's changes, each tagged;
 * owner checks read the document within the tenant; a resume replays one tenant's entity.
 */
import t from 'tap'
import pg from 'pg'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { WireError } from '../../../lib/errors.js'
import { documentSchema, hardDeleteSql, upsertCall, type DocumentOptions, type MartenCommand } from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant: string | null, roles: string[] = []): string =>
  signHs256({ sub, roles, exp: now() + 600, ...(tenant === null ? {} : { org: { tenant } }) }, SECRET)
const auth = { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
const squad: DocumentOptions = { schema: 'public', name: 'squad', idType: 'string', tenancy: 'conjoined' }
const fixture: DocumentOptions = { schema: 'public', name: 'fixture', idType: 'string', tenancy: 'conjoined' }
const settings: DocumentOptions = { schema: 'public', name: 'usersettings', idType: 'string', tenancy: 'conjoined' }

async function martenDatabase (label: string, shapes: DocumentOptions[]): Promise<{ url: string, run: (c: MartenCommand) => Promise<pg.QueryResult> }> {
  const url = await freshDatabase(t, label)
  const marten = await role(t, url, `${label}_app`, ['public'])
  const db = await marten.client()
  for (const shape of shapes) await db.query(documentSchema(shape))
  return { url, run: async (c) => await db.query(c.text, c.values) }
}

/** What a socket received of one entity, within a bounded wait for a marker change that follows it. */
const received = (ws: TestClient, type: string, id: string): unknown[] => ws.messages.filter(isNotification(type, id)).map((m) => m.data)

t.test('conjoined tenancy', async (t) => {
  const { url, run } = await martenDatabase('tenancy_conjoined', [squad, fixture, settings])
  const { client } = await startApp(t, {
    databases: [{ name: 'ballr', url }],
    capture: { channel: 'tenancy:changes' },
    entities: {
      Squad: { access: 'authenticated', payload: 'full' },
      Fixture: { access: 'public' },
      UserSettings: { access: 'owner', ownerPath: ['userId'], payload: 'full' }
    },
    auth
  })
  const red = await client(`?token=${token('r-user', 'Red')}`)
  const blue = await client(`?token=${token('b-user', 'Blue')}`)
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  const anonymous = await client()

  t.test('two tenants\' entities with one id are two entities', async (t) => {
    t.match(await red.subscribe('Squad', 's-1'), { type: 'subscribed', data: { tenantId: 'Red', subscriptionId: 'Squad:s-1' } }, 'scoped to the token\'s tenant')
    t.match(await blue.subscribe('Squad', 's-1'), { type: 'subscribed', data: { tenantId: 'Blue' } })
    t.match(await admin.subscribe('Squad', 's-1'), { type: 'subscribed', data: { entityType: 'Squad' } }, 'an admin without a tenant watches every tenant')
    t.match(await anonymous.subscribe('Squad', 's-1'), { data: { code: WireError.unauthenticated } })

    const big = 'R'.repeat(30 * 1024)
    await run(upsertCall(squad, 'upsert', { id: 's-1', doc: { tenant: 'Red', notes: big }, tenantId: 'Red' }))
    const redSees = await red.next(isNotification('Squad', 's-1'))
    t.match(redSees.data, { tenantId: 'Red', payload: { tenant: 'Red' } }, 'Red\'s document, read back within Red (too large for the NOTIFY)')
    t.equal(redSees.data.payload.notes.length, big.length)
    t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red', payload: { tenant: 'Red' } }, 'tagged for the admin')

    await run(upsertCall(squad, 'upsert', { id: 's-1', doc: { tenant: 'Blue' }, tenantId: 'Blue' }))
    t.match((await blue.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Blue', changeType: 'created', payload: { tenant: 'Blue' } })
    t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Blue' })
    await run(hardDeleteSql(squad, 's-1', 'Blue'))
    t.match((await blue.next(isNotification('Squad', 's-1'))).data, { changeType: 'deleted', tenantId: 'Blue' })

    // a marker change of Red's: by the time it arrives, anything of Blue's would have come before it
    await run(upsertCall(squad, 'upsert', { id: 's-1', doc: { tenant: 'Red', marker: true }, tenantId: 'Red' }))
    t.match((await red.next(isNotification('Squad', 's-1'))).data, { payload: { marker: true } })
    t.same(received(red, 'Squad', 's-1'), [], 'Red saw nothing of Blue\'s s-1: not its document, not its delete')
    t.notOk(blue.raw.some((f) => f.includes('RRRR')), 'Blue never got Red\'s document')
  })

  t.test('only an admin crosses tenants', async (t) => {
    t.match(await red.subscribe('Squad', 's-2', 'x'), { type: 'subscribed' })
    red.send({ type: 'subscribe', id: 'other', data: { entityType: 'Squad', entityId: 's-2', tenantId: 'Blue' } })
    t.match(await red.next((m) => m.id === 'other'), { type: 'subscription_error', data: { code: WireError.forbidden, tenantId: 'Blue' } })
    admin.send({ type: 'subscribe', id: 'named', data: { entityType: 'Squad', entityId: 's-2', tenantId: 'Blue' } })
    t.match(await admin.next((m) => m.id === 'named'), { type: 'subscribed', data: { subscriptionId: 'Squad@Blue:s-2', tenantId: 'Blue' } })
    const signedInNoTenant = await client(`?token=${token('drifter', null)}`)
    t.match(await signedInNoTenant.subscribe('Squad', 's-2'), { data: { code: WireError.forbidden } }, 'a token without a tenant watches no tenant\'s private entity')
    red.send({ type: 'subscribe', id: 'untenanted', data: { entityType: 'Squad', entityId: 's-2', tenantId: 'Red' } })
    t.match(await red.next((m) => m.id === 'untenanted'), { type: 'subscribed' }, 'naming its own tenant is the same subscription')
    red.send({ type: 'unsubscribe', id: 'u', data: { subscriptionId: 'Squad@Red:s-2' } })
    await red.next((m) => m.id === 'u')
    await run(upsertCall(squad, 'upsert', { id: 's-2', doc: {}, tenantId: 'Red' }))
    await run(upsertCall(squad, 'upsert', { id: 's-1', doc: { again: true }, tenantId: 'Red' }))
    await red.next((m) => isNotification('Squad', 's-1')(m) && m.data.payload.again === true)
    t.same(received(red, 'Squad', 's-2'), [], 'one unsubscribe ends it, however it was named')
  })

  t.test('anonymous watchers of a public tenanted type see every tenant\'s changes, tagged', async (t) => {
    t.match(await anonymous.subscribe('Fixture', 'f-1'), { type: 'subscribed' })
    await run(upsertCall(fixture, 'upsert', { id: 'f-1', doc: {}, tenantId: 'Red' }))
    await run(upsertCall(fixture, 'upsert', { id: 'f-1', doc: {}, tenantId: 'Blue' }))
    const first = await anonymous.next(isNotification('Fixture', 'f-1'))
    const second = await anonymous.next(isNotification('Fixture', 'f-1'))
    t.same([first.data.tenantId, second.data.tenantId], ['Red', 'Blue'])
    t.same([first.data.changeType, second.data.changeType], ['created', 'created'], 'each tenant\'s entity is new')
  })

  t.test('owner checks read the document within the tenant', async (t) => {
    await run(upsertCall(settings, 'upsert', { id: 'prefs', doc: { userId: 'r-user' }, tenantId: 'Red' }))
    await run(upsertCall(settings, 'upsert', { id: 'prefs', doc: { userId: 'someone-else' }, tenantId: 'Blue' }))
    t.match(await red.subscribe('UserSettings', 'prefs'), { type: 'subscribed', data: { tenantId: 'Red' } })
    const blueUser = await client(`?token=${token('r-user', 'Blue')}`)
    t.match(await blueUser.subscribe('UserSettings', 'prefs'), { data: { code: WireError.forbidden } }, 'the same user id in another tenant owns nothing there')
  })
})

t.test('outbox mode: a resume replays one tenant\'s entity', async (t) => {
  const { url, run } = await martenDatabase('tenancy_outbox', [squad])
  const { client } = await startApp(t, {
    databases: [{ name: 'ballr', url }],
    capture: { mode: 'outbox', channel: 'tenancy:outbox' },
    entities: { Squad: { access: 'authenticated', payload: 'full' } },
    auth
  })
  const first = await client(`?token=${token('r-user', 'Red')}`)
  await first.subscribe('Squad', 's-3')
  await run(upsertCall(squad, 'upsert', { id: 's-3', doc: { n: 1 }, tenantId: 'Red' }))
  const since = (await first.next(isNotification('Squad', 's-3'))).data.position as string
  first.close()
  await run(upsertCall(squad, 'upsert', { id: 's-3', doc: { n: 2 }, tenantId: 'Blue' }))
  await run(upsertCall(squad, 'upsert', { id: 's-3', doc: { n: 3 }, tenantId: 'Red' }))
  const again = await client(`?token=${token('r-user', 'Red')}`)
  again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Squad', entityId: 's-3', since } })
  t.match(await again.next((m) => m.id === 'resume'), { type: 'subscribed', data: { recovered: true } })
  const replayed = await again.next(isNotification('Squad', 's-3'))
  t.match(replayed.data, { tenantId: 'Red', payload: { n: 3 } }, 'Red\'s change, not Blue\'s')
})

t.test('a database per tenant feeds one entity type', async (t) => {
  const redDb = await martenDatabase('tenancy_red', [{ ...squad, tenancy: 'single' }])
  const blueDb = await martenDatabase('tenancy_blue', [{ ...squad, tenancy: 'single' }])
  const { app, client } = await startApp(t, {
    databases: [{ name: 'red', url: redDb.url, tenant: 'Red' }, { name: 'blue', url: blueDb.url, tenant: 'Blue' }],
    entities: { Squad: { database: ['red', 'blue'], access: 'authenticated', payload: 'full' } },
    auth
  })
  t.equal(app.changefeed.registry.get('Squad')?.tenancy, 'database')
  const red = await client(`?token=${token('r-user', 'Red')}`)
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  t.match(await red.subscribe('Squad', 's-1'), { type: 'subscribed', data: { tenantId: 'Red' } })
  t.match(await admin.subscribe('Squad', 's-1'), { type: 'subscribed' })
  admin.send({ type: 'subscribe', id: 'nobody', data: { entityType: 'Squad', entityId: 's-1', tenantId: 'Green' } })
  t.match(await admin.next((m) => m.id === 'nobody'), { data: { code: WireError.badRequest } }, 'a tenant without a database')
  // who may not watch the type learns nothing of its tenants: a known and an unknown one are answered alike
  const anonymous = await client()
  const tenantless = await client(`?token=${token('drifter', null)}`)
  for (const [who, socket] of [['anonymous', anonymous], ['a user whose token names no tenant', tenantless]] as const) {
    const [known, unknown] = await Promise.all(['Blue', 'Green'].map(async (tenantId) => {
      socket.send({ type: 'subscribe', id: tenantId, data: { entityType: 'Squad', entityId: 's-1', tenantId } })
      const reply = await socket.next((m) => m.id === tenantId)
      return { type: reply.type, code: reply.data.code, error: reply.data.error }
    }))
    t.not(known.code, undefined, `${who}: refused`)
    t.same(unknown, known, `${who}: a tenant without a database is answered as one with a database`)
  }
  const single = { ...squad, tenancy: 'single' as const }
  await blueDb.run(upsertCall(single, 'upsert', { id: 's-1', doc: { from: 'blue' } }))
  t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Blue', payload: { from: 'blue' } })
  await redDb.run(upsertCall(single, 'upsert', { id: 's-1', doc: { from: 'red', notes: 'x'.repeat(20_000) } }))
  t.match((await red.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red', payload: { from: 'red' } }, 'read back from Red\'s own database')
  t.match((await admin.next(isNotification('Squad', 's-1'))).data, { tenantId: 'Red' })
  t.same(received(red, 'Squad', 's-1'), [], 'Red never saw Blue\'s change')
})
