/**
 * Resume from the bus's history in notify mode, on every provider that keeps one: inside the window a client that
 * reconnects (to another instance, after its TCP connection was cut without a close frame) gets `recovered: true`,
 * then what it missed oldest first, then live notifications, with no duplicate and no gap; outside it (the window
 * exceeded, the history lost with its broker, a position of another epoch) `recovered: false`. Feeds and `delta`
 * types resume too. The memory bus, Redis and NATS (JetStream) alike.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { isNotification, type Frame, type TestClient } from '../../helpers/client.js'
import { NATS_URL, REDIS_URL, ownBroker, requireService } from '../../helpers/brokers.js'
import { until } from '../../helpers/wait.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import type { ChangefeedPluginOptions } from '../../../lib/index.js'

await requireService('Redis')
await requireService('NATS')

type Provider = 'memory' | 'redis' | 'nats'

function optionsFor (provider: Provider, url: string | undefined, extra: Partial<ChangefeedPluginOptions> = {}): ChangefeedPluginOptions {
  return {
    entities: { Score: { access: 'public', payload: 'full', feed: true }, Board: { access: 'public', payload: 'delta' } },
    bus: provider === 'memory' ? { provider } : { provider, url, prefix: `hist-${randomUUID().slice(0, 8)}` },
    limits: { maxConnectionsPerIp: 10_000 },
    ...extra
  }
}

/** Two instances on one bus (memory: one instance, twice). */
async function pair (t: { teardown(fn: () => unknown): void }, provider: Provider, extra: Partial<ChangefeedPluginOptions> = {}, url = provider === 'nats' ? NATS_URL : REDIS_URL): Promise<[RunningApp, RunningApp]> {
  const options = optionsFor(provider, url, extra)
  const a = await startApp(t, options)
  return [a, provider === 'memory' ? a : await startApp(t, options)]
}

const score = async (app: RunningApp, id: string, n: number): Promise<void> => {
  await app.app.changefeed.publish({ entityType: 'Score', entityId: id, changeType: 'updated', payload: { n } })
}

async function resume (c: TestClient, entityType: string, entityId: string, since: string, id = 'resume'): Promise<Frame> {
  c.send({ type: 'subscribe', id, data: { entityType, entityId, since } })
  return await c.next((m) => m.id === id)
}

const ns = (frames: Frame[]): number[] => frames.map((f) => f.data.payload.n)

for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: a resume on another instance after a cut connection gets what it missed, then live, once each`, async (t) => {
    const [a, b] = await pair(t, provider)
    const first = await a.client()
    t.equal((await first.subscribe('Score', 'm1')).type, 'subscribed')
    for (let n = 1; n <= 3; n++) await score(a, 'm1', n)
    const seen = [await first.next(isNotification('Score', 'm1')), await first.next(isNotification('Score', 'm1')), await first.next(isNotification('Score', 'm1'))]
    t.same(ns(seen), [1, 2, 3])
    // (NATS: the stream's sequence, after the history's start the subscribe stored)
    t.match(seen[0].data.position, provider === 'nats' ? /^[0-9a-f]{8}:\d+$/ : /^[0-9a-f]{8}:1$/, 'a channel position, the first of a new history')
    const offsets = seen.map((f) => Number(f.data.position.split(':')[1]))
    // NATS: the stream's sequence, which the type's feed channel shares
    if (provider === 'nats') t.ok(offsets[0] < offsets[1] && offsets[1] < offsets[2], 'offsets grow')
    else t.same(offsets, [1, 2, 3], 'offsets count the channel\'s messages')
    // no close frame: the TCP connection just ends
    first.ws.terminate()
    for (let n = 4; n <= 6; n++) await score(a, 'm1', n)

    const again = await b.client()
    const reply = await resume(again, 'Score', 'm1', seen[2].data.position)
    t.equal(reply.type, 'subscribed')
    t.equal(reply.data.recovered, true, 'recovered')
    // live notifications published while the resume is answered, and after
    const live = (async () => { for (let n = 7; n <= 20; n++) await score(a, 'm1', n) })()
    await live
    t.ok(await until(() => again.messages.filter(isNotification('Score', 'm1')).length >= 17), 'every notification arrives')
    const got = again.messages.filter(isNotification('Score', 'm1'))
    t.same(ns(got), Array.from({ length: 17 }, (_, i) => i + 4), 'oldest first, no duplicate, no gap')
    t.equal(again.messages.indexOf(got[0]) >= 0, true)
    t.equal(new Set(got.map((f) => f.data.position)).size, 17, 'positions distinct')
    const stats = a.app.changefeed.stats()
    t.equal(stats.router.documentReads, 0, 'no database read')
    t.equal(b.app.changefeed.stats().connections.resumes.recovered, 1, 'counted: recovered')
    t.equal(b.app.changefeed.stats().connections.replayed, 3, 'counted: replayed')
    if (provider === 'memory') t.ok((stats.history.bytes ?? 0) > 0, `the memory bus holds ${String(stats.history.bytes)} bytes of history`)
    else if (provider === 'nats') t.ok((b.app.changefeed.stats().history.bytes ?? 0) > 0, 'NATS: the instance resumed from keeps what it read')
    else t.equal(stats.history.bytes, null, 'the broker holds it')
  })

  t.test(`${provider}: outside the window, or another epoch: recovered false`, async (t) => {
    const [a, b] = await pair(t, provider, { history: { size: 3, ttlSeconds: 60 } })
    const first = await a.client()
    await first.subscribe('Score', 'm2')
    await score(a, 'm2', 1)
    const since = (await first.next(isNotification('Score', 'm2'))).data.position as string
    const again = await b.client()
    t.equal((await resume(again, 'Score', 'm2', since, 'inside')).data.recovered, true, 'inside the window: nothing missed')
    // Redis trims streams by whole nodes (MAXLEN ~): it keeps at least `size`, and drops the oldest past a node's worth
    const later = provider === 'redis' ? 250 : 4
    for (let n = 2; n <= later + 1; n++) await score(a, 'm2', n)
    const late = await b.client()
    t.equal((await resume(late, 'Score', 'm2', since, 'outside')).data.recovered, false, `${later} later than a window of three`)
    const [epoch, offset] = since.split(':')
    const other = epoch === '00000000' ? '00000001' : '00000000'
    t.equal((await resume(late, 'Score', 'm2', `${other}:${offset}`, 'epoch')).data.recovered, false, 'another epoch')
    t.equal((await resume(late, 'Score', 'm2', 'not-a-position', 'junk')).data.recovered, false, 'not a position')
    t.equal(b.app.changefeed.stats().connections.resumes.not_recovered, 3, 'counted: not recovered')
  })

  t.test(`${provider}: a feed resumes`, async (t) => {
    const [a, b] = await pair(t, provider)
    const first = await a.client()
    await first.subscribe('Score', '*')
    await score(a, 'f1', 1)
    const since = (await first.next((m) => m.type === 'notification')).data.position as string
    first.ws.terminate()
    await score(a, 'f2', 2)
    await score(a, 'f1', 3)
    const again = await b.client()
    const reply = await resume(again, 'Score', '*', since)
    t.equal(reply.data.recovered, true)
    await score(a, 'f3', 4)
    t.ok(await until(() => again.messages.filter((m) => m.type === 'notification').length >= 3))
    const got = again.messages.filter((m) => m.type === 'notification')
    t.same(ns(got), [2, 3, 4], 'missed, then live')
    t.ok(got.every((f) => f.data.subscriptionId === 'Score:*'), 'named for the feed')
  })

  t.test(`${provider}: a delta type resumes consistent with the client's base`, async (t) => {
    const [a, b] = await pair(t, provider)
    const board = async (n: number): Promise<void> => { await a.app.changefeed.publish({ entityType: 'Board', entityId: 'b1', changeType: 'updated', payload: { n, text: 'x'.repeat(200) } }) }
    const first = await a.client()
    await first.subscribe('Board', 'b1')
    await board(1)
    await board(2)
    const full = await first.next(isNotification('Board', 'b1'))
    const patch = await first.next(isNotification('Board', 'b1'))
    t.equal(full.data.payloadType, 'full')
    t.equal(patch.data.payloadType, 'delta', 'live: a patch')
    t.equal(patch.data.basePosition, full.data.position, 'its base is the position the client holds')
    first.ws.terminate()
    await board(3)
    const again = await b.client()
    t.equal((await resume(again, 'Board', 'b1', patch.data.position)).data.recovered, true)
    await board(4)
    const replayed = await again.next(isNotification('Board', 'b1'))
    t.equal(replayed.data.payloadType, 'full', 'the replay is whole documents')
    t.equal(replayed.data.payload.n, 3)
    const next = await again.next(isNotification('Board', 'b1'))
    t.equal(next.data.payload?.n ?? next.data.patch?.[0]?.value, 4)
    if (next.data.payloadType === 'delta') t.equal(next.data.basePosition, replayed.data.position, 'a patch after it applies to the replayed document')
  })
}

for (const provider of ['redis', 'nats'] as const) {
  t.test(`${provider}: history lost with its broker (restarted, history in memory): a new epoch, recovered false`, async (st) => {
    // stopped after the app (torn down with the file), which closes its client first
    const broker = await ownBroker(t, provider)
    const a = await startApp(st, optionsFor(provider, broker.url))
    const first = await a.client()
    await first.subscribe('Score', 'm3')
    await score(a, 'm3', 1)
    const since = (await first.next(isNotification('Score', 'm3'))).data.position as string
    await broker.stop()
    await broker.start()
    st.ok(await until(() => a.app.changefeed.health().bus.ready, 15_000), 'the bus is back')
    st.ok(await until(async () => await score(a, 'm3', 2).then(() => true, () => false), 15_000), 'publishes again')
    const position = (await first.next((m) => isNotification('Score', 'm3')(m) && m.data.payload.n === 2, 15_000)).data.position as string
    st.not(position.split(':')[0], since.split(':')[0], 'a new epoch')
    const again = await a.client()
    st.equal((await resume(again, 'Score', 'm3', since)).data.recovered, false, 'the old position is never mistaken for a new one')
  })
}

t.test('memory: a lone watcher\'s drop; what changed while nobody watched is in the history (the channel lingers)', async (t) => {
  const a = await startApp(t, optionsFor('memory', undefined))
  const first = await a.client()
  await first.subscribe('Score', 'lone')
  await score(a, 'lone', 1)
  const since = (await first.next(isNotification('Score', 'lone'))).data.position as string
  first.ws.terminate()
  t.ok(await until(() => a.app.changefeed.stats().connections.active === 0), 'the server saw the socket go')
  await score(a, 'lone', 2)
  t.equal(a.app.changefeed.stats().router.unwatched, 0, 'the change went to the channel nobody watches now')
  const again = await a.client()
  t.equal((await resume(again, 'Score', 'lone', since)).data.recovered, true)
  t.same(ns([await again.next(isNotification('Score', 'lone'))]), [2], 'the change made meanwhile')
})

// a type whose documents are read back (too large for a NOTIFY): the cluster is asked whether anyone watches, and a
// change nobody watched never reached the history
for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: a change nobody watched (past the linger): the resume is refused, never told of nothing`, async (t) => {
    const url = await freshDatabase(t, `hist_unwatched_${provider}`)
    const sql = await sqlClient(t, url)
    await sql.query(martenTableSql('mt_doc_match'))
    // the memory bus lingers for the window (at most a minute): a window of a second here
    const history = { size: 100, ttlSeconds: provider === 'memory' ? 1 : 60 }
    const a = await startApp(t, { ...optionsFor(provider, provider === 'nats' ? NATS_URL : REDIS_URL), databases: [{ name: 'main', url }], entities: { Match: { access: 'public', payload: 'full' } }, history })
    const blob = 'commentary '.repeat(1000)
    let n = 0
    const write = async (): Promise<void> => {
      n++
      await sql.query('INSERT INTO mt_doc_match (id, data) VALUES (\'big\', jsonb_build_object(\'n\', $1::int, \'blob\', $2::text)) ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data', [n, blob])
    }
    const first = await a.client()
    await first.subscribe('Match', 'big')
    await write()
    const since = (await first.next(isNotification('Match', 'big'), 10_000)).data.position as string
    first.ws.terminate()
    // changes until one finds nobody watching (the cluster's interest updated, the linger over)
    const router = (): { changes: number, unwatched: number, documentReads: number } => a.app.changefeed.stats().router
    t.ok(await until(async () => {
      const before = router().changes
      await write()
      await until(() => router().changes > before, 5000)
      return router().unwatched > 0
    }, 20_000), 'a change found nobody watching')
    t.ok(router().documentReads >= 1, 'its document is read back, not inlined')
    const again = await a.client()
    t.equal((await resume(again, 'Match', 'big', since)).data.recovered, false, 'refused: the client refetches')
  })
}

for (const provider of ['memory', 'redis', 'nats'] as Provider[]) {
  t.test(`${provider}: a subscription is told where it starts; cut before its first notification, it resumes from there`, async (t) => {
    const [a, b] = await pair(t, provider)
    const first = await a.client()
    const reply = await first.subscribe('Score', 'quiet')
    const start = reply.data.position as string
    t.match(start, /^[0-9a-f]{8}:\d+$/, 'a position, though the channel has had no message')
    first.ws.terminate()
    t.ok(await until(() => a.app.changefeed.stats().connections.active === 0))
    await score(a, 'quiet', 1)
    await score(a, 'quiet', 2)
    const again = await b.client()
    t.equal((await resume(again, 'Score', 'quiet', start)).data.recovered, true, 'recovered from the start')
    const got = [await again.next(isNotification('Score', 'quiet')), await again.next(isNotification('Score', 'quiet'))]
    t.same(ns(got), [1, 2], 'what it missed, nothing else')
    // a channel that has had messages: the last one's position
    const later = await b.client()
    t.equal((await later.subscribe('Score', 'quiet')).data.position, got[1].data.position, 'the last message\'s position')
    const fed = await a.client()
    t.match((await fed.subscribe('Score', '*')).data.position, /^[0-9a-f]{8}:\d+$/, 'a feed too')
    fed.send({ type: 'subscribe', id: 'many', data: { entityType: 'Score', entityIds: ['quiet', 'fresh'] } })
    const many = await fed.next((m) => m.id === 'many')
    t.equal(many.data.positions.quiet, got[1].data.position, 'a subscribe of many: each one\'s')
    t.match(many.data.positions.fresh, /^[0-9a-f]{8}:\d+$/)
    fed.send({ type: 'subscribe', id: 'snap', data: { entityType: 'Score', entityId: 'quiet', snapshot: true } })
    t.notOk('position' in (await fed.next((m) => m.id === 'snap')).data, 'a snapshot has its own')
  })
}
