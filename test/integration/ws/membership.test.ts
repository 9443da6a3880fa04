/**
 * Bus membership follows the local watchers whatever the interleaving: a socket subscribing while the last
 * watcher's unsubscribe is on its way keeps receiving (on Redis and NATS this silenced the entity before), and once
 * every socket is gone no bus subscription and no interest entry is left.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { NATS_URL, REDIS_URL, requireService } from '../../helpers/brokers.js'
import { until } from '../../helpers/wait.js'
import { connect } from 'nats'

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

t.test('nats: the interest bucket does not keep a marker for every key ever removed', async (t) => {
  const prefix = `bucket-${randomUUID().slice(0, 8)}`
  const server = await startApp(t, { entities: { Score: { access: 'public' } }, limits: { subscribeRatePerSecond: 10_000 }, bus: { provider: 'nats', url: NATS_URL, prefix, instanceTtlSeconds: 1 } })
  const nc = await connect({ servers: NATS_URL })
  t.teardown(async () => await nc.close())
  const jsm = await nc.jetstreamManager()
  const stream = `KV_${prefix.replace(/[^A-Za-z0-9_-]/g, '_')}_interest`
  const messages = async (): Promise<number> => (await jsm.streams.info(stream)).state.messages
  const socket = await server.client()
  for (let i = 0; i < 200; i++) {
    t.equal((await socket.subscribe('Score', `m-${i}`)).type, 'subscribed', `subscribe ${i}`)
    socket.send({ type: 'unsubscribe', id: `u${i}`, data: { entityType: 'Score', entityId: `m-${i}` } })
    await socket.next((m) => m.id === `u${i}`)
  }
  t.ok(await until(async () => await messages() < 20, 15_000), 'markers of removed keys are purged while the instance runs')
  socket.close()
  await server.app.close()
  t.equal(await messages(), 0, 'nothing is left after the instance closed')
})
