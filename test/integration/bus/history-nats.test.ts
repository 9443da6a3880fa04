/**
 * The NATS history's runs (lib/bus/history-runs.ts): an instance answers a resume from what it read of the channel
 * before, asking JetStream only what came since; and never answers one that another instance's reset, gap or the
 * history's size or age made impossible. Resumes read at once while messages are stored each get an unbroken tail.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { connect, type JetStreamManager, type NatsConnection } from 'nats'
import { NatsHistory } from '../../../lib/bus/history-nats.js'
import { NatsReads, directOf } from '../../../lib/bus/history-nats-reads.js'
import { splitPosition, type HistoryLimits } from '../../../lib/bus/history.js'
import { subjectOf } from '../../../lib/bus/subjects.js'
import { NATS_URL, ownBroker, requireService } from '../../helpers/brokers.js'
import { until } from '../../helpers/wait.js'

await requireService('NATS')

const limits = { size: 5, ttlSeconds: 60 }
const messagesOf = (out: string[] | null): string[] | null => out?.map((m) => splitPosition(m).message) ?? null

/** `n` instances' histories on one prefix, each on its own connection; their streams deleted after the test. */
async function instances (t: { teardown(fn: () => unknown): void }, n: number): Promise<{
  histories: NatsHistory[]
  stream: (limits: HistoryLimits) => string
  subject: (limits: HistoryLimits, last: string) => string
  jsm: JetStreamManager
  deleteMessage: (stream: string, seq: number) => Promise<void>
}> {
  const prefix = `hn-${randomUUID().slice(0, 8)}`
  const histories: NatsHistory[] = []
  for (let i = 0; i < n; i++) {
    const nc = await connect({ servers: NATS_URL })
    t.teardown(async () => await nc.close())
    histories.push(new NatsHistory(nc, prefix, async () => {}))
  }
  const admin = await connect({ servers: NATS_URL })
  const jsm = await admin.jetstreamManager()
  t.teardown(async () => {
    for await (const name of jsm.streams.names()) if (name.startsWith(prefix + '_')) await jsm.streams.delete(name)
    await admin.close()
  })
  return {
    histories,
    stream: ({ size, ttlSeconds }) => `${prefix}_HISTORY_${size}_${ttlSeconds}`,
    subject: ({ size, ttlSeconds }, last) => `${subjectOf(prefix + ':history')}.${size}_${ttlSeconds}.${last}`,
    jsm,
    deleteMessage: async (stream, seq) => { await jsm.streams.deleteMessage(stream, seq) }
  }
}

t.test('a resume is answered from what was read before: JetStream is asked only what came since', async (t) => {
  const { histories: [a, b, c], stream, deleteMessage } = await instances(t, 3)
  const channel = `hn:Match:${randomUUID()}`
  const at: string[] = []
  for (let i = 1; i <= 3; i++) at.push((await a.append(channel, `m${i}`, limits))!)
  t.same(messagesOf(await b.after(channel, at[0], limits)), ['m2', 'm3'])
  t.ok(b.bytes > 0, `the run is counted (${b.bytes} bytes)`)
  // a probe: m2 removed behind every instance's back
  await deleteMessage(stream(limits), Number(at[1].split(':')[1]))
  at.push((await a.append(channel, 'm4', limits))!)
  t.same(messagesOf(await b.after(channel, at[0], limits)), ['m2', 'm3', 'm4'], 'the run read before, and what came since')
  t.same(messagesOf(await c.after(channel, at[0], limits)), ['m3', 'm4'], 'an instance without one reads JetStream')
  t.same(messagesOf(await b.after(channel, at[2], limits)), ['m4'], 'from the middle of the run')
  t.same(messagesOf(await b.after(channel, at[3], limits)), [], 'from its end')
})

t.test('another instance\'s reset or gap, and the history\'s size, are never answered from a run', async (t) => {
  const { histories: [a, b] } = await instances(t, 2)
  const channel = `hn:Match:${randomUUID()}`
  const at: string[] = []
  const append = async (message: string): Promise<string> => { const p = (await a.append(channel, message, limits))!; at.push(p); return p }
  for (let i = 1; i <= 3; i++) await append(`m${i}`)
  t.same(messagesOf(await b.after(channel, at[0], limits)), ['m2', 'm3'])

  await a.reset(channel)
  t.equal(await b.after(channel, at[2], limits), null, 'reset, nothing stored since: refused')
  await append('m4')
  t.equal(await b.after(channel, at[0], limits), null, 'reset, then a message: refused')
  t.equal(await b.after(channel, at[2], limits), null, 'from the run\'s end too')
  await append('m5')
  t.same(messagesOf(await b.after(channel, at[3], limits)), ['m5'], 'a position of the new history resumes')

  await a.markGap()
  t.equal(await b.after(channel, at[3], limits), null, 'a gap marked elsewhere: refused')
  const fresh = await append('m6')
  t.equal(await b.after(channel, at[4], limits), null, 'from before the gap, though the run holds it')
  t.same(messagesOf(await b.after(channel, fresh, limits)), [], 'from after it: resumes')

  for (let i = 7; i <= 12; i++) await append(`m${i}`)
  t.equal(await b.after(channel, fresh, limits), null, 'pushed out by the history\'s size: refused')
  t.same(messagesOf(await b.after(channel, at[9], limits)), ['m11', 'm12'], 'inside the window: resumes')
})

t.test('aged out: refused, as JetStream would', async (t) => {
  const { histories: [a, b, c] } = await instances(t, 3)
  const short = { size: 5, ttlSeconds: 1 }
  const channel = `hn:Match:${randomUUID()}`
  const first = (await a.append(channel, 'm1', short))!
  await a.append(channel, 'm2', short)
  t.same(messagesOf(await b.after(channel, first, short)), ['m2'])
  t.ok(await until(async () => await c.after(channel, first, short) === null, 10_000), 'aged out of JetStream')
  t.equal(await b.after(channel, first, short), null, 'and of the run')
})

t.test('resumes read at once while messages are stored: each gets an unbroken tail from its position', async (t) => {
  const { histories: [a, b] } = await instances(t, 2)
  const wide = { size: 100, ttlSeconds: 60 }
  const channel = `hn:Match:${randomUUID()}`
  const at: string[] = []
  for (let i = 1; i <= 10; i++) at.push((await a.append(channel, `m${i}`, wide))!)
  const resumes: Array<Promise<{ from: number, out: string[] | null }>> = []
  for (let i = 11; i <= 40; i++) {
    at.push((await a.append(channel, `m${i}`, wide))!)
    for (let k = 0; k < 3; k++) {
      const from = 1 + Math.floor(Math.random() * (at.length - 1))
      resumes.push(b.after(channel, at[from - 1], wide).then((out) => ({ from, out })))
    }
  }
  for (const { from, out } of await Promise.all(resumes)) {
    const got = messagesOf(out)
    if (got === null) { t.fail(`from m${from}: refused`); continue }
    const expected = Array.from({ length: got.length }, (_, i) => `m${from + 1 + i}`)
    if (JSON.stringify(got) !== JSON.stringify(expected)) t.fail(`from m${from}: ${got.join(' ')}`)
  }
  t.pass(`${resumes.length} resumes, each the messages after its position, none missing`)
  t.same(messagesOf(await b.after(channel, at[0], wide)), at.slice(1).map((_, i) => `m${i + 2}`), 'and then all of them')
})

t.test('a gap seen is remembered after its marker is gone; a keep-alive is not written over a gap', async (t) => {
  const { histories: [a, b, c], stream, subject, jsm } = await instances(t, 3)
  const channel = `hn:Match:${randomUUID()}`
  const before = (await a.append(channel, 'm1', limits))!
  await a.markGap()
  await a.append(channel, 'm2', limits)
  t.equal(await b.after(channel, before, limits), null, 'from before the gap: refused')
  // the gap's marker gone (as when it ages out, which the messages before it did first in JetStream, not in a run)
  const gap = await jsm.streams.getMessage(stream(limits), { last_by_subj: subject(limits, '$gap') })
  await jsm.streams.deleteMessage(stream(limits), gap.seq)
  t.equal(await b.after(channel, before, limits), null, 'still refused by the instance that saw it')
  t.same(messagesOf(await c.after(channel, before, limits)), ['m2'], '(one that never saw it reads JetStream, where this probe took the marker)')

  const short = { size: 5, ttlSeconds: 1 }
  const quiet = `hn:Match:${randomUUID()}`
  const storedAt = Date.now()
  const kept = (await a.append(quiet, 'q1', short))!
  await a.markGap()
  // quiet for half its ttl: a keep-alive would be due, but it would outlive the gap's marker
  await until(() => Date.now() - storedAt > 600, 5_000)
  await a.keep([quiet], short)
  const last = await jsm.streams.getMessage(stream(short), { last_by_subj: subject(short, subjectOf(quiet)) })
  t.equal(last.header?.get('Changefeed-Kept') ?? '', '', 'no keep-alive stored')
  t.ok(await until(async () => await a.after(quiet, kept, short) === null, 10_000), 'so the resume is refused once the messages aged out')
})

t.test('a read overtaken by the history\'s size is refused, never missing what was pushed out', async (t) => {
  const { histories: [a, b] } = await instances(t, 2)
  const small = { size: 10, ttlSeconds: 60 }
  const channel = `hn:Match:${randomUUID()}`
  // while b reads m5, other instances store seven more: m1..m6 are pushed out behind its back
  const inner = b as unknown as { reads: NatsReads, manager: () => Promise<JetStreamManager> }
  let trigger = -1
  inner.reads = new NatsReads(async () => {
    const direct = directOf(await inner.manager())
    return {
      getMessage: async (name, query) => {
        if ('seq' in query && query.seq === trigger) {
          trigger = -1
          for (let i = 10; i <= 16; i++) await a.append(channel, `m${i}`, small)
        }
        return await direct.getMessage(name, query)
      }
    }
  })
  const at: string[] = []
  for (let i = 1; i <= 3; i++) at.push((await a.append(channel, `m${i}`, small))!)
  t.same(messagesOf(await b.after(channel, at[0], small)), ['m2', 'm3'], 'a run of three')
  for (let i = 4; i <= 9; i++) at.push((await a.append(channel, `m${i}`, small))!)
  trigger = Number(at[4].split(':')[1])
  const [fromThird, fromSecond] = await Promise.all([b.after(channel, at[2], small), b.after(channel, at[1], small)])
  t.equal(trigger, -1, 'the messages were pushed out during the read')
  t.equal(fromThird, null, 'refused')
  t.equal(fromSecond, null, 'refused, in the same round')
})

t.test('a position stored twice on a channel (a change published again) is resumed from its first copy', async (t) => {
  const { histories: [a, b, c] } = await instances(t, 3)
  const [first, other] = [`hn:Match:${randomUUID()}`, `hn:Match:*:${randomUUID()}`]
  const p = (await a.append(first, 'change', limits))!
  await a.append(other, 'change', limits, p)
  const x = (await a.append(other, 'x', limits))!
  await a.append(other, 'y', limits)
  await a.append(other, 'change again', limits, p)
  t.same(messagesOf(await c.after(other, p, limits)), ['x', 'y', 'change again'], 'read from JetStream')
  t.same(messagesOf(await b.after(other, x, limits)), ['y', 'change again'], 'a run that begins after the first copy')
  t.same(messagesOf(await b.after(other, p, limits)), ['x', 'y', 'change again'], 'is not taken for it')
  t.same(messagesOf(await b.after(other, p, limits)), ['x', 'y', 'change again'], 'nor the run read for it')
})

t.test('an instance that only reads, after its server restarted and lost the history: no old position read in the new one', async (t) => {
  const broker = await ownBroker(t, 'nats')
  const prefix = `hn-${randomUUID().slice(0, 8)}`
  const open = async (): Promise<{ history: NatsHistory, nc: NatsConnection }> => {
    const nc = await connect({ servers: broker.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 })
    t.teardown(async () => await nc.close())
    return { history: new NatsHistory(nc, prefix, async () => {}), nc }
  }
  const [a, b] = [await open(), await open()]
  const channel = `hn:Match:${randomUUID()}`
  const old: string[] = []
  for (let i = 1; i <= 3; i++) old.push((await a.history.append(channel, `m${i}`, limits))!)
  t.same(messagesOf(await b.history.after(channel, old[0], limits)), ['m2', 'm3'], 'a run of the old stream')
  const reconnected = async (nc: NatsConnection): Promise<void> => { for await (const s of nc.status()) if (s.type === 'reconnect') return }
  const back = Promise.all([reconnected(a.nc), reconnected(b.nc)])
  await broker.stop()
  await broker.start()
  await back
  // the writer makes the stream again: sequences from 1, the old positions' numbers
  const fresh: string[] = []
  for (let i = 1; i <= 3; i++) fresh.push((await a.history.append(channel, `n${i}`, limits))!)
  t.not(fresh[0].split(':')[0], old[0].split(':')[0], 'a new epoch')
  t.equal(await b.history.after(channel, old[0], limits), null, 'the old position: refused')
  t.equal(await b.history.after(channel, old[2], limits), null, 'from the old run\'s end too')
  t.same(messagesOf(await b.history.after(channel, fresh[0], limits)), ['n2', 'n3'], 'a new one resumes')
})

t.test('a history started again (a reset) within JetStream\'s duplicate window gets a start a resume is answered from', async (t) => {
  const { histories: [a, b] } = await instances(t, 2)
  const channel = `hn:Match:${randomUUID()}`
  const first = (await a.head(channel, limits))!
  t.same(await b.after(channel, first, limits), [], 'the start resumes')
  await a.reset(channel)
  const again = (await a.head(channel, limits))!
  t.not(again, first, 'not the start purged with the history')
  t.same(await b.after(channel, again, limits), [], 'the new start resumes')
  t.equal(await b.after(channel, first, limits), null, 'the old one does not')
})
