/**
 * Owner-scoped documents on every path a frame takes to a socket: a `since` replay (outbox mode) of an entity that
 * changed hands never carries the previous owner's documents to the new owner.
 */
import t from 'tap'
import { freshDatabase, martenTableSql, sqlClient } from './helpers/services.js'
import { startApp } from './helpers/app.js'
import { isNotification, type Frame, type TestClient } from './helpers/client.js'
import { now, signHs256 } from './helpers/tokens.js'
import { until } from './helpers/wait.js'
import { WireError } from '../lib/errors.js'

const SECRET = 'owner-delivery-test-secret-0123456789'
const token = (sub: string, roles: string[] = []): string => signHs256({ sub, roles, exp: now() + 600 }, SECRET)

const url = await freshDatabase(t, 'owner_delivery')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_usersettings'))
const settings = async (id: string, userId: string, theme: string): Promise<void> => {
  await sql.query('INSERT INTO mt_doc_usersettings (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()',
    [id, JSON.stringify({ userId, theme })])
}

t.test('outbox mode: a since replay of a document that changed hands', async (t) => {
  const { client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    capture: { mode: 'outbox', channel: 'cf_owner_replay', outbox: { pollIntervalMs: 50 } },
    entities: { UserSettings: { access: 'owner', ownerPath: ['userId'], payload: 'full' } },
    auth: { jwt: { secret: SECRET } }
  })
  await settings('moved', 'user-a', 'created by a')
  const a = await client(`?token=${token('user-a')}`)
  t.equal((await a.subscribe('UserSettings', 'moved')).type, 'subscribed')
  // (the creation may be published after the subscribe: each receipt is waited for by its document)
  const receipt = async (theme: string): Promise<Frame> => await a.next((m) => isNotification('UserSettings', 'moved')(m) && m.data.payload.theme === theme)
  await settings('moved', 'user-a', 'private-to-a')
  const before = (await receipt('private-to-a')).data.position as string
  await settings('moved', 'user-a', 'private-to-a-again')
  await receipt('private-to-a-again')
  await settings('moved', 'user-b', 'of-b')
  t.match(await a.next((m) => m.type === 'subscription_error'), { data: { code: WireError.forbidden } }, 'a lost it live')
  await settings('moved', 'user-b', 'of-b-later')

  const resume = async (c: TestClient, id: string, data: object = {}): Promise<Frame> => {
    c.send({ type: 'subscribe', id, data: { entityType: 'UserSettings', entityId: 'moved', since: before, ...data } })
    return await c.next((m) => m.id === id)
  }
  const admin = await client(`?token=${token('boss', ['Admin'])}`)
  t.match(await resume(admin, 'admin'), { type: 'subscribed', data: { recovered: true } }, 'an admin may see every owner\'s documents')
  const replayed = [await admin.next(isNotification('UserSettings', 'moved')), await admin.next(isNotification('UserSettings', 'moved')), await admin.next(isNotification('UserSettings', 'moved'))]
  t.same(replayed.map((m) => m.data.payload.theme), ['private-to-a-again', 'of-b', 'of-b-later'], 'the replay holds a\'s document, then b\'s')

  const b = await client(`?token=${token('user-b')}`)
  t.match(await resume(b, 'b'), { type: 'subscribed', data: { recovered: false } }, 'the new owner refetches instead')
  t.match(await resume(b, 'b-snapshot', { snapshot: true }), { type: 'subscribed', data: { recovered: false, snapshot: { payload: { userId: 'user-b', theme: 'of-b-later' } } } },
    'with snapshot: its own current document')
  await settings('moved', 'user-b', 'of-b-live')
  t.equal((await b.next(isNotification('UserSettings', 'moved'))).data.payload.theme, 'of-b-live', 'the subscription holds: live changes flow')
  t.notOk(b.raw.some((f) => f.includes('private-to-a')), 'no frame carried a\'s document to b')

  const positions = replayed.map((m) => m.data.position as string)
  t.match(await resume(b, 'b-after', { since: positions[1] }), { type: 'subscribed', data: { recovered: true } }, 'a replay of its own documents only recovers')
  t.ok(await until(() => b.messages.some((m) => isNotification('UserSettings', 'moved')(m) && m.data.payload.theme === 'of-b-later')), 'and is written')
  t.notOk(b.raw.some((f) => f.includes('private-to-a')), 'still nothing of a\'s')
})
