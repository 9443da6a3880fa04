/** Receiver counts across three instances on one Redis converge within 2 s of joins and leaves. */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { serve } from '../helpers/serve.js'
import { TestClient } from '../helpers/client.js'
import { freshDatabase } from '../helpers/services.js'
import { REDIS_URL, requireService } from '../helpers/brokers.js'

await requireService('Redis')
const url = await freshDatabase(t, 'watchers')
const file = join(mkdtempSync(join(tmpdir(), 'changefeed-watchers-')), 'changefeed.json')
writeFileSync(file, JSON.stringify({
  server: { port: 0 },
  databases: [{ name: 'main', url }],
  entities: { RugbyGameState: { access: 'public', payload: 'full' } },
  bus: { provider: 'redis', url: REDIS_URL, prefix: `watchers-${randomUUID().slice(0, 8)}` },
  limits: { watcherCountIntervalMs: 250 }
}))
const addresses = await Promise.all([0, 1, 2].map(async () => (await serve(t, ['--config', file]).address).replace('http', 'ws') + '/ws'))

t.test('counts converge within 2 s of joins and leaves', async (t) => {
  const badge = await TestClient.open(addresses[0])
  t.teardown(() => badge.close())
  badge.send({ type: 'subscribe', id: 'b', data: { entityType: 'RugbyGameState', entityId: 'match-1', watchers: true } })
  t.equal((await badge.next((m) => m.type === 'watchers')).data.count, 1)

  const joiners = await Promise.all([addresses[1], addresses[1], addresses[2]].map(async (a) => await TestClient.open(a)))
  t.teardown(() => { for (const j of joiners) j.close() })
  for (const j of joiners) await j.subscribe('RugbyGameState', 'match-1')
  const joinedAt = Date.now()
  await badge.next((m) => m.type === 'watchers' && m.data.count === 4, 2000)
  t.comment(`4 watching after ${Date.now() - joinedAt} ms`)
  t.pass('joins on two other instances are counted within 2 s')

  joiners[0].close()
  joiners[2].close()
  const leftAt = Date.now()
  await badge.next((m) => m.type === 'watchers' && m.data.count === 2, 2000)
  t.comment(`2 watching after ${Date.now() - leftAt} ms`)
  t.pass('leaves are counted within 2 s')
})
