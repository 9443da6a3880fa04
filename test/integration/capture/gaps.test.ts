/**
 * One broker outage, one resync per watched entity per socket: the outage is seen by each of the instance's broker
 * connections and announced by the leader, and every watcher still hears of it once, before any later change.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { isNotification, type TestClient } from '../../helpers/client.js'
import { ownBroker } from '../../helpers/brokers.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { until } from '../../helpers/wait.js'

const IDS = ['t1', 't2', 't3']

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: an outage resyncs each entity once per socket`, async (t) => {
    const broker = await ownBroker(t, provider)
    const url = await freshDatabase(t, `gaps_${provider}`)
    const sql = await sqlClient(t, url)
    await sql.query(martenTableSql('mt_doc_team'))
    const options = {
      databases: [{ name: 'main', url }],
      capture: { leaderRetryMs: 200 },
      entities: { Team: { access: 'public' as const } },
      bus: { provider, url: broker.url, prefix: `gaps-${randomUUID().slice(0, 8)}` }
    }
    const apps: RunningApp[] = [await startApp(t, options), await startApp(t, options)]
    t.ok(await until(() => apps.some((a) => a.app.changefeed.health().databases.main.leader)), 'one instance leads')
    const sockets: TestClient[] = []
    for (const app of apps) {
      for (let i = 0; i < 2; i++) {
        const socket = await app.client()
        for (const id of IDS) t.equal((await socket.subscribe('Team', id)).type, 'subscribed')
        sockets.push(socket)
      }
    }

    await broker.stop()
    t.ok(await until(() => apps.every((a) => !a.app.changefeed.health().bus.ready)), 'every instance sees the outage')
    await broker.start()
    t.ok(await until(() => apps.every((a) => a.app.changefeed.health().ready), 15_000), 'every instance is ready again')
    // a change of every entity after the outage: its notification follows whatever resync the outage caused
    const leader = apps.find((a) => a.app.changefeed.health().databases.main.leader)!
    t.ok(await until(async () => {
      for (const id of IDS) await leader.app.changefeed.publish({ entityType: 'Team', entityId: id, changeType: 'updated' })
      return sockets.every((s) => IDS.every((id) => s.messages.some(isNotification('Team', id))))
    }, 10_000), 'changes flow again')
    for (const [i, socket] of sockets.entries()) {
      for (const id of IDS) {
        const frames = socket.messages.filter((m) => (m.type === 'resync' || m.type === 'notification') && m.data.entityId === id)
        t.equal(frames.filter((m) => m.type === 'resync').length, 1, `socket ${i}, ${id}: one resync`)
        t.equal(frames[0]?.type, 'resync', `socket ${i}, ${id}: the resync comes before the later change`)
      }
    }
  })
}
