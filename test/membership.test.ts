/**
 * Bus membership follows the local watchers whatever the interleaving: a socket subscribing while the last
 * watcher's unsubscribe is on its way keeps receiving (on Redis and NATS this silenced the entity before), and once
 * every socket is gone no bus subscription and no interest entry is left.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp } from './helpers/app.js'
import { isNotification } from './helpers/client.js'
import { NATS_URL, REDIS_URL, requireService } from './helpers/brokers.js'
import { until } from './helpers/wait.js'

await requireService('Redis')
await requireService('NATS')

const ROUNDS = 40

for (const [provider, url] of [['redis', REDIS_URL], ['nats', NATS_URL]] as const) {
  t.test(`${provider}: a subscribe racing the last unsubscribe keeps the entity`, async (t) => {
    const prefix = `race-${randomUUID().slice(0, 8)}`
    const options = { entities: { Score: { access: 'public' as const, payload: 'full' as const } }, bus: { provider, url, prefix } }
    const server = await startApp(t, options)
    const publisher = await startApp(t, options)
    let lost = 0
    for (let round = 0; round < ROUNDS; round++) {
      const id = `match-${round}`
      const a = await server.client()
      const b = await server.client()
      t.equal((await a.subscribe('Score', id)).type, 'subscribed')
      // the last watcher leaves and another arrives before the unsubscribe has gone through
      a.send({ type: 'unsubscribe', id: 'u', data: { entityType: 'Score', entityId: id } })
      b.send({ type: 'subscribe', id: 's', data: { entityType: 'Score', entityId: id } })
      await a.next((m) => m.id === 'u')
      await b.next((m) => m.id === 's' && m.type === 'subscribed')
      await publisher.app.changefeed.publish({ entityType: 'Score', entityId: id, changeType: 'updated', payload: { round } })
      const got = await b.next(isNotification('Score', id), 3000).catch(() => null)
      if (got === null) lost++
      a.close()
      b.close()
    }
    t.equal(lost, 0, `every round delivered (${ROUNDS} rounds)`)
    t.ok(await until(() => server.app.changefeed.stats().subscriptions.active === 0), 'no subscription left')
    t.ok(await until(() => server.app.changefeed.stats().bus.channels === 0), 'no bus subscription left')
    t.ok(await until(async () => Object.keys(await server.app.changefeed.totals()).length === 0, 5000), 'no interest left in the cluster')
  })
}
