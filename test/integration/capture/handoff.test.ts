/**
 * Leadership that moves without a gap (notify mode, Redis and NATS): the leader is closed while a writer commits
 * changes one after another; the follower, which listened on standby, publishes what the leader had not, so a socket
 * on it gets every change exactly once, in commit order, with no resync, and a resume from before the handoff is
 * recovered. A follower that has just started on a quiet database is covered by its mark; without the leader's record
 * nothing can be shown, and the takeover is a gap, as without a standby.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { connect } from 'nats'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { isNotification, type Frame } from '../../helpers/client.js'
import { NATS_URL, REDIS_URL, requireService } from '../../helpers/brokers.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { until } from '../../helpers/wait.js'
import type { ChangefeedPluginOptions } from '../../../lib/index.js'

await requireService('Redis')
await requireService('NATS')

const UPSERT = 'INSERT INTO mt_doc_score (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data'
const ns = (frames: Frame[]): number[] => frames.map((f) => f.data.payload.n)
const leads = (a: RunningApp): boolean => a.app.changefeed.health().databases.main.leader
const standbyOf = (a: RunningApp): NonNullable<ReturnType<RunningApp['app']['changefeed']['stats']>['listeners'][string]['standby']> => a.app.changefeed.stats().listeners.main.standby!

/** The leader's record of what it handed on, gone (as with an expiry, or a broker that lost it). */
async function forget (prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL)
  try {
    await redis.del(`${prefix}:handoff:main`)
  } finally {
    redis.disconnect()
  }
  const nc = await connect({ servers: NATS_URL })
  try {
    const jsm = await nc.jetstreamManager()
    await jsm.streams.purge(prefix.replace(/[^A-Za-z0-9_-]/g, '_') + '_HANDOFF').catch(() => {})
  } finally {
    await nc.close()
  }
}

for (const provider of ['redis', 'nats'] as const) {
  async function cluster (t: { teardown(fn: () => unknown): void }, label: string): Promise<{ options: ChangefeedPluginOptions, write: (id: string, n: number) => Promise<void> }> {
    const url = await freshDatabase(t, `handoff_${label}_${provider}`)
    const sql = await sqlClient(t, url)
    await sql.query(martenTableSql('mt_doc_score'))
    return {
      options: {
        databases: [{ name: 'main', url }],
        // a follower would not try before a minute: it takes over on the closing leader's notice
        capture: { leaderRetryMs: 60_000 },
        entities: { Score: { access: 'public', payload: 'full' } },
        bus: { provider, url: provider === 'nats' ? NATS_URL : REDIS_URL, prefix: `handoff-${randomUUID().slice(0, 8)}` }
      },
      write: async (id, n) => { await sql.query(UPSERT, [id, JSON.stringify({ n })]) }
    }
  }

  /** A leader that published one change of `id` (its position), then a follower whose mark the leader recorded. */
  async function quietPair (t: { teardown(fn: () => unknown): void, ok: (v: boolean, m: string) => void }, label: string, id: string): Promise<{ a: RunningApp, b: RunningApp, options: ChangefeedPluginOptions, write: (id: string, n: number) => Promise<void>, position: string }> {
    const { options, write } = await cluster(t, label)
    const a = await startApp(t, options)
    t.ok(await until(() => leads(a)), 'the first instance leads')
    const watcher = await a.client()
    await watcher.subscribe('Score', id)
    await write(id, 1)
    const position = (await watcher.next(isNotification('Score', id))).data.position as string
    const recorded = standbyOf(a).recorded
    const b = await startApp(t, options)
    t.ok(await until(() => standbyOf(a).recorded > recorded), 'the leader recorded the follower\'s mark')
    return { a, b, options, write, position }
  }

  t.test(`${provider}: a closed leader hands over without a gap`, async (t) => {
    const { options, write } = await cluster(t, 'gapless')
    const a = await startApp(t, options)
    t.ok(await until(() => leads(a)), 'the first instance leads')
    const b = await startApp(t, options)
    t.ok(await until(() => standbyOf(b).buffered >= 1), 'the second listens on standby (its mark is in its buffer)')
    const socket = await b.client()
    t.equal((await socket.subscribe('Score', 's1')).type, 'subscribed')

    // a writer commits one change after another, before, during and after the handoff
    let n = 0
    const writing = { on: true }
    const writer = (async () => { while (writing.on) await write('s1', ++n) })()
    t.ok(await until(() => n >= 20, 10_000), 'changes before the handoff')
    await a.app.close()
    t.ok(await until(() => leads(b), 10_000), 'the second instance leads')
    const after = n
    t.ok(await until(() => n >= after + 20, 10_000), 'changes after the handoff')
    writing.on = false
    await writer
    t.ok(await until(() => socket.messages.filter(isNotification('Score', 's1')).length >= n, 10_000), `all ${n} notifications arrive`)
    const got = socket.messages.filter(isNotification('Score', 's1'))
    t.same(ns(got), Array.from({ length: n }, (_, i) => i + 1), 'every change exactly once, in commit order')
    t.same(socket.messages.filter((m) => m.type === 'resync'), [], 'no resync')
    const standby = b.app.changefeed.stats().listeners.main.standby
    t.match(standby, { gapless: 1, gap: 0 }, 'one takeover without a gap')
    t.equal(b.app.changefeed.stats().listeners.main.gaps, 0, 'no gap counted')

    // a resume from a position before the handoff crosses it
    const again = await b.client()
    again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Score', entityId: 's1', since: got[4].data.position } })
    const reply = await again.next((m) => m.id === 'resume')
    t.equal(reply.data.recovered, true, 'recovered across the handoff')
    t.ok(await until(() => again.messages.filter(isNotification('Score', 's1')).length >= n - 5), 'the replay')
    t.same(ns(again.messages.filter(isNotification('Score', 's1'))), Array.from({ length: n - 5 }, (_, i) => i + 6), 'what came after, once each')
  })

  t.test(`${provider}: a follower that has just started, on a quiet database, takes over without a gap (its mark)`, async (t) => {
    // the last change was committed before the follower listened: only the follower's mark can show it covered
    const { a, b, write, position } = await quietPair(t, 'quiet', 's2')
    t.ok(await until(() => standbyOf(b).buffered === 1), 'the follower has its own mark')
    const socket = await b.client()
    t.equal((await socket.subscribe('Score', 's2')).type, 'subscribed')
    await a.app.close()
    t.ok(await until(() => leads(b), 10_000), 'the follower leads')
    await write('s2', 2)
    t.equal((await socket.next(isNotification('Score', 's2'))).data.payload.n, 2, 'the next change')
    t.same(socket.messages.filter((m) => m.type === 'resync'), [], 'no resync')
    t.match(standbyOf(b), { gapless: 1, gap: 0 })
    const again = await b.client()
    again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Score', entityId: 's2', since: position } })
    t.equal((await again.next((m) => m.id === 'resume')).data.recovered, true, 'a resume crosses the handoff')
  })

  t.test(`${provider}: a takeover without the record is a gap, as before`, async (t) => {
    const { a, b, options, position } = await quietPair(t, 'norecord', 's3')
    await forget(options.bus!.prefix!)
    const socket = await b.client()
    t.equal((await socket.subscribe('Score', 's3')).type, 'subscribed')
    await a.app.close()
    const resync = await socket.next((m) => m.type === 'resync', 10_000)
    t.same(resync.data, { reason: 'leader_change', entityType: 'Score', entityId: 's3' }, 'its watchers resync')
    t.match(b.app.changefeed.stats().listeners.main, { gaps: 1, standby: { gapless: 0, gap: 1 } }, 'a gap counted')
    const again = await b.client()
    again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Score', entityId: 's3', since: position } })
    t.equal((await again.next((m) => m.id === 'resume')).data.recovered, false, 'no resume crosses the gap')
  })
}
