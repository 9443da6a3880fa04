/**
 * A socket that reads slowly has its notifications held and conflated (lib/ws/outbound.ts). A reply held among them
 * keeps its place: a notification made after the snapshot in a `subscribed` reply reaches the client after that
 * reply, never merged into an earlier notification of the entity ahead of it, so the client ends on the newer state.
 */
import t from 'tap'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'

t.test('a resubscribe with snapshot on a conflating socket: the notification after the snapshot comes after the reply', async (t) => {
  const url = await freshDatabase(t, 'conflation_order')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_score'))
  const { app, client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: { Score: { access: 'public', payload: 'full' }, Commentary: { access: 'public', payload: 'full' } },
    limits: { conflateAboveBytes: 16 * 1024, maxBufferedBytes: 64 * 1024 * 1024 }
  })
  const score = async (home: number): Promise<void> => {
    await sql.query('INSERT INTO mt_doc_score (id, data) VALUES (\'s1\', $1) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()',
      [JSON.stringify({ home })])
  }
  /** frames the server holds for the slow socket (the only one that ever held any) */
  const held = (): number => {
    for (const ws of app.websocketServer.clients) {
      const queue = (ws as unknown as { connection?: { outbound?: { held: number } } }).connection?.outbound
      if (queue !== undefined) return queue.held
    }
    return 0
  }
  const slow = await client()
  const reader = await client()
  for (const c of [slow, reader]) await c.subscribe('Score', 's1')
  await slow.subscribe('Commentary', 'c1')
  const arrived = async (home: number, c = reader): Promise<boolean> => await until(() => c.messages.some((m) => isNotification('Score', 's1')(m) && m.data.payload.home === home))
  await score(0)
  t.ok(await arrived(0, slow), 'the slow socket reads, at first')
  const socket = (slow.ws as unknown as { _socket: { pause(): void, resume(): void } })._socket
  socket.pause()
  const text = 'commentary '.repeat(6000)
  for (let i = 0; i < 5000 && held() === 0; i++) await app.changefeed.publish({ entityType: 'Commentary', entityId: 'c1', changeType: 'updated', payload: { i, text } })
  t.ok(await until(() => held() === 1), 'the slow socket holds (and conflates) its notifications')

  await score(1)
  t.ok(await arrived(1) && await until(() => held() === 2), 'a change held for the slow socket')
  slow.send({ type: 'subscribe', id: 'again', data: { entityType: 'Score', entityId: 's1', snapshot: true } })
  t.ok(await until(() => held() === 3), 'then the reply with the snapshot')
  await score(2)
  t.ok(await arrived(2), 'a change made after the snapshot was delivered')

  socket.resume()
  t.ok(await until(() => slow.messages.some((m) => m.id === 'again') && slow.messages.some((m) => isNotification('Score', 's1')(m) && m.data.payload.home === 2), 10_000),
    'once it reads again, the reply and the last change arrive')
  const states = slow.messages.flatMap((m) => m.id === 'again' ? [m.data.snapshot.payload.home] : isNotification('Score', 's1')(m) ? [m.data.payload.home] : [])
  t.same(states, [0, 1, 1, 2], 'the held change, the snapshot, then the change after it: the client ends on the latest state')
})
