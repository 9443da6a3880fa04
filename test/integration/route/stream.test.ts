/**
 * The change stream against the machine's NATS: what is published reaches a durable consumer (the example service)
 * in order on its subject, a republished position is stored once, a consumer that stops resumes where it was, and
 * the plugin in outbox mode streams every change from PostgreSQL.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { connect, type JetStreamManager } from 'nats'
import { pino } from 'pino'
import { ChangeStream, type StreamRecord } from '../../../lib/route/stream.js'
import { consume, type Change } from '../../../examples/stream-consumer.js'
import { NATS_URL, requireService } from '../../helpers/brokers.js'
import { sleep, until } from '../../helpers/wait.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'

interface Teardown { teardown(fn: () => unknown): void }
interface Opened { stream: ChangeStream, jsm: JetStreamManager, name: string, prefix: string }

await requireService('NATS')

/** A stream of the test's own (unique name and subjects), deleted at teardown. */
async function openStream (t: Teardown): Promise<Opened> {
  const id = randomUUID().slice(0, 8)
  const name = `CHANGEFEED_TEST_${id}`
  const prefix = `changefeed-test-${id}`
  const stream = await ChangeStream.open({ url: NATS_URL, name, subjectPrefix: prefix, maxAgeSeconds: 600, maxBytes: 16 * 1024 * 1024, duplicateWindowSeconds: 60 }, pino({ level: 'silent' }))
  const admin = await connect({ servers: NATS_URL })
  const jsm = await admin.jetstreamManager()
  t.teardown(async () => {
    await stream.close()
    await jsm.streams.delete(name).catch(() => {})
    await admin.close()
  })
  return { stream, jsm, name, prefix }
}

const entities: Array<[string, string]> = [['Fixture', 'f.1'], ['Fixture', 'home team'], ['Fixture', '50%>*'], ['Team', 't1']]

function record (i: number): StreamRecord {
  const [entityType, entityId] = entities[i % entities.length]
  const position = String(i).padStart(8, '0')
  const data = { entityType, entityId, changeType: 'updated', payloadType: 'minimal', timestamp: new Date(0).toISOString(), position }
  return { entityType, entityId, position, frame: JSON.stringify({ type: 'notification', data }) }
}

const positions = (n: number): string[] => Array.from({ length: n }, (_, i) => record(i).position)

t.test('a durable consumer receives every change, in order, on its subject', async (t) => {
  const { stream, name, prefix } = await openStream(t)
  for (let i = 0; i < 200; i++) await stream.publish(record(i))
  t.equal(stream.published, 200)
  t.equal(stream.failed, 0)
  t.equal(stream.subjectOf('Fixture', 'f.1'), `${prefix}.Fixture.f%2e1`, 'the id is one token')
  t.equal(stream.subjectOf('Fixture', '50%>*'), `${prefix}.Fixture.50%25%3e%2a`)

  const received: Change[] = []
  const consumer = await consume({ url: NATS_URL, stream: name, durable: 'all', handle: (c) => { received.push(c) } })
  t.teardown(consumer.stop)
  t.ok(await until(() => received.length >= 200), 'all delivered')
  await consumer.stop()
  t.same(received.map((c) => c.position), positions(200), 'once each, in order')
  t.ok(received.every((c) => c.subject === stream.subjectOf(c.entityType, c.entityId)), 'each on its entity\'s subject')
  t.same(received[0], { entityType: 'Fixture', entityId: 'f.1', changeType: 'updated', position: '00000000', subject: `${prefix}.Fixture.f%2e1`, data: JSON.parse(record(0).frame).data })

  const teams: Change[] = []
  const filtered = await consume({ url: NATS_URL, stream: name, durable: 'teams', filterSubject: `${prefix}.Team.>`, handle: (c) => { teams.push(c) } })
  t.teardown(filtered.stop)
  // the stream's last change is a Team's: a consumer gets the stream in order, so once it is in, all before it is
  t.ok(await until(() => teams.some((c) => c.position === record(199).position)), 'the last change arrives')
  await filtered.stop()
  t.same(teams.map((c) => c.position), positions(200).filter((_, i) => i % entities.length === 3), 'a filter subject selects one type')
})

t.test('a republished position is stored once', async (t) => {
  const { stream, jsm, name, prefix } = await openStream(t)
  for (let i = 0; i < 3; i++) await stream.publish(record(i))
  await stream.publish(record(1))
  t.equal((await jsm.streams.info(name)).state.messages, 3, 'the duplicate window dropped it')
  t.equal(stream.failed, 0, 'and the publish was acked')

  // opening again with the same limits keeps the stream, with other limits updates it
  const again = await ChangeStream.open({ url: NATS_URL, name, subjectPrefix: prefix, maxAgeSeconds: 300, maxBytes: 8 * 1024 * 1024, duplicateWindowSeconds: 30 }, pino({ level: 'silent' }))
  await again.close()
  const info = await jsm.streams.info(name)
  t.equal(info.state.messages, 3, 'reopening keeps the changes')
  t.equal(info.config.max_bytes, 8 * 1024 * 1024, 'and applies the new limits')

  await stream.close()
  await stream.close()
  await t.rejects(stream.publish(record(3)), 'a publish that cannot be acked rejects')
  t.equal(stream.failed, 1)
})

t.test('a stopped consumer resumes where it left off', async (t) => {
  const { stream, name } = await openStream(t)
  for (let i = 0; i < 200; i++) await stream.publish(record(i))
  // a short ack wait: a change on its way when the consumer stopped comes again soon
  const options = { url: NATS_URL, stream: name, durable: 'resumer', ackWaitSeconds: 2 }

  const first: string[] = []
  const one = await consume({ ...options, handle: async (c) => { first.push(c.position); await sleep(5) } })
  t.teardown(one.stop)
  t.ok(await until(() => first.length >= 50))
  await one.stop()
  t.ok(first.length < 200, `stopped mid-way, after ${first.length}`)
  t.same(first, positions(first.length), 'in order up to the stop')

  const second: string[] = []
  const two = await consume({ ...options, handle: (c) => { second.push(c.position) } })
  t.teardown(two.stop)
  t.ok(await until(() => new Set([...first, ...second]).size === 200, 10_000), 'every position is seen at least once')
  await two.stop()
  t.notOk(second.some((p) => first.includes(p)), 'nothing acked before the stop comes again')
  // not always first.length itself: a change on its way when the first stopped comes after the ack wait
  t.ok(second[0] > first[first.length - 1], 'the second run goes on after the last change of the first')
})

t.test('end to end: outbox mode publishes every change, watched or not, to the stream', async (t) => {
  const url = await freshDatabase(t, 'stream')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_fixture'))
  const id = randomUUID().slice(0, 8)
  const name = `CHANGEFEED_E2E_${id}`
  const { app, client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    capture: { mode: 'outbox', channel: `cf_stream_${id}`, outbox: { pollIntervalMs: 100 }, stream: { enabled: true, url: NATS_URL, name, subjectPrefix: `e2e-${id}` } },
    entities: { Fixture: { access: 'public', payload: 'full' } }
  })
  const admin = await connect({ servers: NATS_URL })
  t.teardown(async () => {
    const jsm = await admin.jetstreamManager()
    await jsm.streams.delete(name).catch(() => {})
    await admin.close()
  })
  const ws = await client()
  await ws.subscribe('Fixture', 'watched')
  for (let i = 0; i < 30; i++) {
    await sql.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data',
      [i % 2 === 0 ? 'watched' : 'unwatched', JSON.stringify({ n: i })])
  }
  const received: Change[] = []
  const consumer = await consume({ url: NATS_URL, stream: name, durable: 'e2e', handle: (c) => { received.push(c) } })
  t.teardown(consumer.stop)
  t.ok(await until(() => received.length >= 30, 10_000), 'every change reached the stream')
  await consumer.stop()
  const ns = (id: string): number[] => received.filter((c) => c.entityId === id).map((c) => (c.data.payload as { n: number }).n)
  t.same(ns('watched'), Array.from({ length: 15 }, (_, i) => 2 * i), 'per entity in commit order, with the documents')
  t.same(ns('unwatched'), Array.from({ length: 15 }, (_, i) => 2 * i + 1), 'unwatched entities too')
  t.ok(received.every((c) => /^[0-9a-f]{8}:\d+$/.test(c.position)), 'with outbox positions')
  const live = []
  for (let i = 0; i < 15; i++) live.push(await ws.next(isNotification('Fixture', 'watched')))
  t.same(live.map((m) => m.data.position), received.filter((c) => c.entityId === 'watched').map((c) => c.position), 'the watcher got the same changes, same positions')
  t.same(app.changefeed.stats().stream, { published: 30, failed: 0 })
})
