/**
 * Owner-scoped documents on every path a frame takes to a socket: a `since` replay (outbox mode) of an entity that
 * changed hands never carries the previous owner's documents to the new owner; a deletion reaches the owner as
 * `deleted` (it carries no document) and the subscription holds, in both capture modes, hard and soft deletes.
 */
import t from 'tap'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type Frame, type TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'
import { hardDeleteSql, softDeleteSql, undoDeleteSql, type DocumentOptions } from '../../fixtures/marten/index.js'

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

for (const mode of ['notify', 'outbox'] as const) {
  t.test(`${mode} mode: the owner of a deleted document hears deleted and keeps its subscription`, async (t) => {
    const db = await freshDatabase(t, `owner_deleted_${mode}`)
    const writer = await sqlClient(t, db)
    const shapes: Record<string, DocumentOptions> = {
      UserSettings: { schema: 'public', name: 'usersettings', idType: 'string', softDelete: true },
      UserBoard: { schema: 'public', name: 'userboard', idType: 'string', softDelete: true }
    }
    for (const shape of Object.values(shapes)) await writer.query(martenTableSql(`mt_doc_${shape.name}`))
    const { client } = await startApp(t, {
      databases: [{ name: 'main', url: db }],
      capture: { mode, channel: `cf_owner_deleted_${mode}`, outbox: { pollIntervalMs: 50 } },
      entities: {
        UserSettings: { access: 'owner', ownerPath: ['userId'], payload: 'full' },
        UserBoard: { access: 'owner', ownerPath: ['userId'], payload: 'delta' }
      },
      auth: { jwt: { secret: SECRET } }
    })
    for (const [type, shape] of Object.entries(shapes)) {
      t.test(type, async (t) => {
        const table = `mt_doc_${shape.name}`
        const run = async ({ text, values }: { text: string, values: unknown[] }): Promise<void> => { await writer.query(text, values) }
        const put = async (userId: string, theme: string): Promise<void> => {
          await writer.query(`INSERT INTO ${table} (id, data) VALUES ('doc', $1) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()`,
            [JSON.stringify({ userId, theme, notes: 'n'.repeat(500) })])
        }
        await put('owner', 'first')
        const owner = await client(`?token=${token('owner')}`)
        // from a snapshot: the creation, which the outbox may publish after the subscribe, is in it, not after it
        owner.send({ type: 'subscribe', id: 's', data: { entityType: type, entityId: 'doc', snapshot: true } })
        t.match(await owner.next((m) => m.id === 's'), { type: 'subscribed', data: { snapshot: { payload: { theme: 'first' } } } })
        const next = async (): Promise<Frame> => await owner.next((m) => isNotification(type, 'doc')(m) || m.type === 'subscription_error')

        await run(hardDeleteSql(shape, 'doc'))
        t.match(await next(), { type: 'notification', data: { changeType: 'deleted', payloadType: 'full', payload: null } }, 'a hard delete: deleted')
        await put('owner', 'again')
        t.match(await next(), { type: 'notification', data: { changeType: 'created', payload: { theme: 'again' } } }, 'the subscription held')

        await run(softDeleteSql(shape, 'doc'))
        t.match(await next(), { type: 'notification', data: { changeType: 'deleted', payloadType: 'full', payload: null } }, 'a Marten soft delete: deleted')
        await run(undoDeleteSql(shape, 'doc'))
        t.match(await next(), { type: 'notification', data: { changeType: 'created', payload: { theme: 'again' } } }, 'the subscription held')

        await run(hardDeleteSql(shape, 'doc'))
        t.match(await next(), { type: 'notification', data: { changeType: 'deleted' } })
        await put('someone-else', 'not-for-the-owner')
        t.match(await next(), { type: 'subscription_error', data: { code: WireError.forbidden } }, 're-created naming someone else: the subscription ends')
        t.notOk(owner.raw.some((f) => f.includes('not-for-the-owner')), 'without the other owner\'s document')
      })
    }
  })
}
