/**
 * Three standalone instances (separate processes) on one PostgreSQL database and one broker, for Redis and for
 * NATS: every change reaches every watcher exactly once wherever it is connected; killing the leader while a writer
 * commits one change after another hands the listener to another instance within 5 s, which publishes what the dead
 * one had not (its standby heard it) and not what it had: every change once, in order, with no resync; a crashed
 * instance's interest expires; a broker restart is survived without restarting anything.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { connect } from 'nats'
import pino from 'pino'
import { serve, type Served } from '../helpers/serve.js'
import { TestClient, isNotification, type Frame } from '../helpers/client.js'
import { adminQuery, freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'
import { ownBroker } from '../helpers/brokers.js'
import { RedisInterest } from '../../lib/interest/redis.js'
import { NatsInterest } from '../../lib/interest/nats.js'
import type { InterestStore } from '../../lib/interest/interest.js'
import { sleep, until } from '../helpers/wait.js'

for (const provider of ['redis', 'nats'] as const) {
  t.test(`three instances on ${provider}`, async (t) => {
    const broker = await ownBroker(t, provider)
    const url = await freshDatabase(t, `cluster_${provider}`)
    const dbName = new URL(url).pathname.slice(1)
    const sql = await sqlClient(t, url)
    await sql.query(martenTableSql('mt_doc_team'))
    await sql.query(martenTableSql('mt_doc_rugbygamestate'))
    const prefix = `cluster-${randomUUID().slice(0, 8)}`
    const file = join(mkdtempSync(join(tmpdir(), 'changefeed-cluster-')), 'changefeed.json')
    writeFileSync(file, JSON.stringify({
      server: { port: 0 },
      databases: [{ name: 'main', url }],
      capture: { channel: 'cluster:changes', leaderRetryMs: 200, reconnectMaxDelayMs: 500 },
      entities: { Team: { access: 'public' }, RugbyGameState: { access: 'public', payload: 'full' } },
      bus: { provider, url: broker.url, prefix, instanceTtlSeconds: 3 }
    }))

    const instances: Served[] = [serve(t, ['--config', file]), serve(t, ['--config', file]), serve(t, ['--config', file])]
    const addresses = await Promise.all(instances.map(async (i) => (await i.address).replace('http', 'ws') + '/ws'))
    const leaderPid = async (): Promise<number | null> => {
      const { rows } = await adminQuery(`SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND a.datname = $1`, [dbName])
      return rows.length === 1 ? Number(String(rows[0].name).split(':').pop()) : null
    }
    t.ok(await until(async () => await leaderPid() !== null, 5000), 'one instance leads')
    const pid = (await leaderPid())!
    const leaderIndex = instances.findIndex((i) => i.child.pid === pid)
    t.not(leaderIndex, -1, `the leader is one of the three (pid ${pid})`)

    const clients: TestClient[][] = []
    for (const address of addresses) {
      const pair = [await TestClient.open(address), await TestClient.open(address)]
      for (const c of pair) {
        t.teardown(() => c.close())
        t.equal((await c.subscribe('Team', 'team-1')).type, 'subscribed')
        t.equal((await c.subscribe('Team', 'marker')).type, 'subscribed')
      }
      clients.push(pair)
    }
    const lonely = clients[leaderIndex][0]
    t.equal((await lonely.subscribe('Team', 'only-on-the-leader')).type, 'subscribed')

    const notificationsOf = (c: TestClient): Frame[] => c.messages.filter(isNotification('Team', 'team-1'))
    /**
     * A marker: a change to another entity every socket watches, committed after the changes before it. The
     * leader captures and publishes in commit order, and the broker keeps a publisher's order: once a socket has
     * it, it has every notification of the changes before it.
     */
    let marks = 0
    const marker = async (sockets: TestClient[]): Promise<void> => {
      await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'marker\', $1) ON CONFLICT (id) DO UPDATE SET data = excluded.data', [JSON.stringify({ v: ++marks })])
      for (const c of sockets) await c.next(isNotification('Team', 'marker'), 5000)
    }
    await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-1\', \'{"v":0}\')')
    for (let v = 1; v <= 3; v++) await sql.query('UPDATE mt_doc_team SET data = $1 WHERE id = \'team-1\'', [JSON.stringify({ v })])
    const all = clients.flat()
    t.ok(await until(() => all.every((c) => notificationsOf(c).length >= 4), 5000), 'every watcher on every instance is notified')
    await marker(all)
    t.same(all.map((c) => notificationsOf(c).map((n) => n.data.changeType)), all.map(() => ['created', 'updated', 'updated', 'updated']),
      'exactly once each, in commit order')
    for (const c of all) c.messages.length = 0

    // an observer of the cluster's interest, as another instance would see it
    let observer: InterestStore
    if (provider === 'redis') {
      const redis = new Redis(broker.url)
      t.teardown(() => redis.disconnect())
      observer = new RedisInterest(redis, prefix, 'observer', 3000, () => [], pino({ level: 'silent' }))
    } else {
      const nc = await connect({ servers: broker.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 })
      t.teardown(async () => await nc.close())
      const nats = new NatsInterest(nc, prefix, 'observer', 3000, () => [], pino({ level: 'silent' }))
      await nats.open()
      observer = nats
    }
    const lonelyChannel = `${prefix}:Team:only-on-the-leader`
    t.equal(await observer.isWatched(lonelyChannel), true, 'the leader\'s interest is in the cluster store')
    t.ok(await until(async () => await observer.watchers(`${prefix}:Team:team-1`) === 6, 3000), 'six watchers of team-1 across the cluster')

    // a writer commits one change after another while the leader is killed without any cleanup
    const survivors = clients.filter((_, i) => i !== leaderIndex).flat()
    for (const c of survivors) t.equal((await c.subscribe('RugbyGameState', 'g1')).type, 'subscribed')
    let n = 0
    const writing = { on: true }
    const writer = (async () => {
      while (writing.on) await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'g1\', $1) ON CONFLICT (id) DO UPDATE SET data = excluded.data', [JSON.stringify({ n: ++n })])
    })()
    t.ok(await until(() => n >= 20, 5000), 'changes before the kill')
    const killedAt = Date.now()
    const killed = once(instances[leaderIndex].child, 'exit')
    instances[leaderIndex].child.kill('SIGKILL')
    await killed
    t.ok(await until(async () => { const p = await leaderPid(); return p !== null && p !== pid }, 5000), 'a new leader within 5 s')
    t.comment(`new leader after ${Date.now() - killedAt} ms`)
    const killedAtChange = n
    t.ok(await until(() => n >= killedAtChange + 20, 5000), 'changes after the takeover')
    writing.on = false
    await writer
    const games = (c: TestClient): Frame[] => c.messages.filter(isNotification('RugbyGameState', 'g1'))
    t.ok(await until(() => survivors.every((c) => games(c).length >= n), 5000), `all ${n} changes reach every surviving socket`)
    await marker(survivors)
    t.same(survivors.map((c) => games(c).map((f) => f.data.payload.n)), survivors.map(() => Array.from({ length: n }, (_, i) => i + 1)), 'exactly once each, in commit order, across the crash')
    t.same(survivors.flatMap((c) => c.messages.filter((m) => m.type === 'resync')), [], 'no resync: the new leader published what the old one had not')
    t.ok(await until(async () => !await observer.isWatched(lonelyChannel), 3000 + 2000), 'the dead instance\'s interest expires after the TTL')
    t.ok(await until(async () => await observer.watchers(`${prefix}:Team:team-1`) === 4, 3000), 'four watchers left')

    // the broker goes away and comes back; nothing is restarted
    for (const c of survivors) c.messages.length = 0
    await broker.stop()
    await sleep(500) // the outage itself (nothing is waited for here)
    await broker.start()
    for (const c of survivors) t.equal((await c.next((m) => m.type === 'resync', 10_000)).data.reason, 'bus_gap', 'the outage is a gap')
    t.ok(await until(async () => await Promise.resolve(observer.isWatched(`${prefix}:Team:team-1`)).catch(() => false), 10_000), 'interest is back')
    // each connection of an instance reports its own gap as it comes back; the instances are ready once all are
    const living = instances.filter((_, i) => i !== leaderIndex)
    t.ok(await until(async () => (await Promise.all(living.map(async (i) => (await fetch(`${await i.address}/health/ready`)).status))).every((s) => s === 200), 10_000), 'every instance is ready again')
    for (const c of survivors) c.messages.length = 0
    await sql.query('UPDATE mt_doc_team SET data = \'{"v":5}\' WHERE id = \'team-1\'')
    t.ok(await until(() => survivors.every((c) => notificationsOf(c).length >= 1), 5000), 'delivery works again')
    await marker(survivors)
    t.same(survivors.map((c) => notificationsOf(c).length), survivors.map(() => 1), 'exactly once')
  })
}
