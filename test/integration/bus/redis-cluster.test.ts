/**
 * The Redis bus on a Redis Cluster (three masters, started here on free ports): entity channels on sharded pub/sub
 * spread over the shards, interest in one hash slot, several instances, and a master restarting.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { Cluster } from 'ioredis'
import calculateSlot from 'cluster-key-slot'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { ownRedisCluster } from '../../helpers/brokers.js'
import { until } from '../../helpers/wait.js'

const cluster = await ownRedisCluster(t)
const prefix = `rc-${randomUUID().slice(0, 8)}`
const options = { entities: { Score: { access: 'public' as const, payload: 'full' as const } }, bus: { provider: 'redis' as const, url: cluster.url, cluster: true, prefix } }
const ids = Array.from({ length: 40 }, (_, i) => `match-${i}`)

t.test('changes reach watchers on every instance, over channels of every shard', async (t) => {
  const [a, b] = [await startApp(t, options), await startApp(t, options)]
  const slots = new Set(ids.map((id) => calculateSlot(`${prefix}:Score:${id}`)))
  t.ok(slots.size > 30, 'the channels hash to many slots')
  const onA = await a.client()
  const onB = await b.client()
  for (const id of ids) {
    t.equal((await onA.subscribe('Score', id)).type, 'subscribed')
    t.equal((await onB.subscribe('Score', id)).type, 'subscribed')
  }
  t.ok(await until(async () => await a.app.changefeed.watchers('Score', 'match-0') === 2, 15_000), 'interest is shared across instances')
  for (const id of ids) await a.app.changefeed.publish({ entityType: 'Score', entityId: id, changeType: 'updated', payload: { id } })
  for (const id of ids) {
    t.equal((await onA.next(isNotification('Score', id))).data.payload.id, id)
    t.equal((await onB.next(isNotification('Score', id))).data.payload.id, id)
  }
  onB.close()
  // (an unsubscribe from each of the shards: slow on a loaded machine)
  t.ok(await until(() => b.app.changefeed.stats().bus.channels === 0, 15_000), 'a socket gone, its sharded subscriptions go')
  t.ok(await until(async () => await a.app.changefeed.watchers('Score', 'match-0') === 1, 15_000), 'and its interest')

  // SPUBLISH reaches only the shard of the channel: nothing goes to every node
  const client = new Cluster([cluster.url.split(',')[0].replace('redis://', '')])
  t.teardown(() => client.disconnect())
  await client.ping()
  const pubsub = await Promise.all(client.nodes('master').map(async (node) => await node.call('PUBSUB', 'SHARDNUMSUB', `${prefix}:Score:match-0`) as [string, number]))
  t.equal(pubsub.reduce((sum, [, n]) => sum + Number(n), 0), 1, 'one shard carries match-0, with one subscriber')
})

t.test('a master restarting is a gap: watchers resync, and changes flow again', async (t) => {
  const app = await startApp(t, options)
  const ws = await app.client()
  for (const id of ids) t.equal((await ws.subscribe('Score', id)).type, 'subscribed')
  const node = cluster.nodes[1]
  await node.stop()
  await node.start()
  t.ok(await until(() => ws.messages.some((m) => m.type === 'resync'), 20_000), 'a resync for the lost shard')
  t.ok(await until(async () => {
    for (const id of ids) await app.app.changefeed.publish({ entityType: 'Score', entityId: id, changeType: 'updated', payload: { after: true } }).catch(() => false)
    return ids.every((id) => ws.messages.some((m) => isNotification('Score', id)(m) && m.data.payload.after === true))
  }, 20_000), 'every channel delivers again')
})
