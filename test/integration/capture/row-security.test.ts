/**
 * Row-level security (Marten 8.31+/9 `UseRowLevelSecurity`: FORCE ROW LEVEL SECURITY and a tenant policy on conjoined
 * tables), with the product installed and run by Marten's own role, which owns the tables and so is subject to the
 * policy: the start-up says which tables have it and how they are read; a document too large for the NOTIFY (20 KB)
 * is read back as its tenant; so are snapshots, filtered feeds and owner checks; a policy on another setting is read
 * with that one; a reader that names no tenant is refused in so many words rather than failing.
 */
import t from 'tap'
import { Writable } from 'node:stream'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type Frame, type TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { WireError } from '../../../lib/errors.js'
import { documentSchema, rowLevelSecuritySession, storeCommand, type DocumentOptions } from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant: string | null, roles: string[] = []): string =>
  signHs256({ sub, roles, exp: now() + 600, ...(tenant === null ? {} : { org: { tenant } }) }, SECRET)

const squad: DocumentOptions = { schema: 'public', name: 'squad', idType: 'string', marten: 9, tenancy: 'conjoined', rowLevelSecurity: 'app.tenant_id' }
const settings: DocumentOptions = { schema: 'public', name: 'usersettings', idType: 'string', marten: 9, tenancy: 'conjoined', rowLevelSecurity: 'app.tenant_id' }
// UseRowLevelSecurity("league.tenant"): found in the policy, whatever capture.tenantSetting says
const lineup: DocumentOptions = { schema: 'public', name: 'lineup', idType: 'string', marten: 9, tenancy: 'conjoined', rowLevelSecurity: 'league.tenant' }

const url = await freshDatabase(t, 'row_security')
const marten = await role(t, url, 'row_security_app', ['public'])
const db = await marten.client()
for (const shape of [squad, settings, lineup]) await db.query(documentSchema(shape))
/** A Marten session of a tenant: its setting first, then its write. */
async function write (shape: DocumentOptions, tenantId: string, id: string, doc: unknown): Promise<void> {
  const session = rowLevelSecuritySession(tenantId, shape.rowLevelSecurity)
  await db.query(session.text, session.values)
  const command = storeCommand(shape, 'upsert', { id, doc, tenantId })
  await db.query(command.text, command.values)
}

const lines: string[] = []
const logger = { level: 'info', stream: new Writable({ write (chunk, _enc, done) { lines.push(chunk.toString()); done() } }) }
const { client } = await startApp(t, {
  databases: [{ name: 'ballr', url: marten.url }],
  capture: { channel: 'rls:changes' },
  entities: {
    Squad: { access: 'authenticated', payload: 'full', feed: true },
    UserSettings: { access: 'owner', ownerPath: ['userId'], payload: 'full' },
    Lineup: { access: 'authenticated', payload: 'full' }
  },
  auth: { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
}, { logger })
let requests = 0
const ask = async (ws: TestClient, data: object): Promise<Frame> => {
  const id = `q${++requests}`
  ws.send({ type: 'subscribe', id, data })
  return await ws.next((m) => m.id === id)
}

t.test('the start-up says which tables have row-level security, and how they will be read', async (t) => {
  const said = (table: string): Record<string, unknown> | undefined => lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.table === table && String(l.msg).includes('row-level security'))
  t.match(said('mt_doc_squad'), { level: 30, setting: 'app.tenant_id', fromPolicy: true, database: 'ballr' })
  t.match(said('mt_doc_lineup'), { setting: 'league.tenant' }, 'the setting its policy reads')
})

t.test('a 20 KB document is read back as its tenant', async (t) => {
  const red = await client(`?token=${token('r-user', 'Red')}`)
  const blue = await client(`?token=${token('b-user', 'Blue')}`)
  await red.subscribe('Squad', 's-1')
  await blue.subscribe('Squad', 's-1')
  const notes = 'R'.repeat(20 * 1024)
  await write(squad, 'Red', 's-1', { coach: 'Ada', notes })
  const seen = await red.next(isNotification('Squad', 's-1'))
  t.match(seen.data, { tenantId: 'Red', payloadType: 'full', payload: { coach: 'Ada' } }, 'the document, not a resync')
  t.equal(seen.data.payload.notes.length, notes.length)
  t.same(red.messages.filter((m) => m.type === 'resync'), [], 'no delivery_failed')
  t.match(await ask(blue, { entityType: 'Lineup', entityId: 'l-1' }), { type: 'subscribed' })
  await write(lineup, 'Blue', 'l-1', { notes: 'b'.repeat(20 * 1024), coach: 'Cy' })
  t.match((await blue.next(isNotification('Lineup', 'l-1'))).data, { tenantId: 'Blue', payload: { coach: 'Cy' } }, 'read with the setting its policy names')
})

t.test('snapshots, filtered feeds and owner checks read as the tenant', async (t) => {
  const red = await client(`?token=${token('r-user', 'Red')}`)
  await write(squad, 'Red', 's-2', { coach: 'Bo', notes: 'x'.repeat(20 * 1024) })
  await write(squad, 'Blue', 's-2', { coach: 'Bo' })
  const reply = await ask(red, { entityType: 'Squad', entityId: 's-2', snapshot: true })
  t.match(reply, { type: 'subscribed', data: { tenantId: 'Red', snapshot: { payload: { coach: 'Bo' } } } }, 'a snapshot')
  // a feed of a type that is not public is an admin's
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  const filtered = await ask(admin, { entityType: 'Squad', entityId: '*', tenantId: 'Red', where: { coach: 'Bo' }, snapshot: true })
  t.match(filtered, { type: 'subscribed', data: { snapshot: { entities: [{ entityId: 's-2', tenantId: 'Red' }] } } }, 'a filter\'s members: Red\'s only')
  t.equal(filtered.data.snapshot.entities.length, 1)

  await write(settings, 'Red', 'prefs', { userId: 'r-user' })
  t.match(await ask(red, { entityType: 'UserSettings', entityId: 'prefs' }), { type: 'subscribed' }, 'the owner, read within its tenant')
  const other = await client(`?token=${token('someone', 'Red')}`)
  t.match(await ask(other, { entityType: 'UserSettings', entityId: 'prefs' }), { data: { code: WireError.forbidden } }, 'another user: not the owner')

  t.match(await ask(admin, { entityType: 'Squad', entityId: '*', where: { coach: 'Bo' }, snapshot: true }), { type: 'subscription_error', data: { code: WireError.badRequest } },
    'every tenant at once cannot be read: refused, saying so')
})
