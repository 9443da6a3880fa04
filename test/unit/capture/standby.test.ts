/**
 * The standby of a follower and the leader's record (lib/capture/standby.ts), on a fake clock with a record in
 * memory: a follower's buffer bounded by time (its newest transaction kept) and by count (what overflows counted and
 * logged once), a takeover that hands on what came after the recorded transaction or, when that cannot be shown,
 * nothing, and a leader that records a transaction only once it and every one before it are routed.
 */
import t from 'tap'
import { HandledLog, Standby, StandbyBuffer, isMark, type HandoffRecord } from '../../../lib/capture/standby.js'
import type { RowChange } from '../../../lib/capture/coalesce.js'
import { Deferred, fakeClock, recordingLogger, turn } from '../fixtures/fakes.js'

const row = (x: number, id = 'a'): RowChange => ({ s: 'public', t: 'mt_doc_team', id, op: 'U', x, ts: 1 })
const txids = (transactions: RowChange[][] | null): Array<string | number> | null => transactions === null ? null : transactions.map((rows) => rows[0].x)

class MemoryRecord implements HandoffRecord {
  readonly values = new Map<string, string>()
  readonly writes: string[] = []
  failing = false
  async write (database: string, txid: string): Promise<void> {
    if (this.failing) throw new Error('the broker is down')
    this.writes.push(txid)
    this.values.set(database, txid)
  }

  async read (database: string): Promise<string | null> {
    if (this.failing) throw new Error('the broker is down')
    return this.values.get(database) ?? null
  }
}

t.test('the buffer keeps a transaction\'s rows together, and what came after a transaction', async (t) => {
  const clock = fakeClock(t)
  const { log } = recordingLogger()
  const buffer = new StandbyBuffer({ maxTransactions: 10, windowMs: 1000 }, 'main', log, () => clock.now())
  buffer.push(row(1))
  buffer.push(row(2, 'a'))
  buffer.push(row(2, 'b'))
  buffer.push(row(3))
  t.equal(buffer.size, 3)
  t.same(buffer.after('1')?.map((rows) => rows.map((r) => r.id)), [['a', 'b'], ['a']], 'a transaction\'s rows in one group')
  t.same(txids(buffer.after('3')), [], 'nothing after the newest')
  t.equal(buffer.after('9'), null, 'a transaction not held')
})

t.test('the buffer drops what is older than the window, but keeps its newest transaction', async (t) => {
  const clock = fakeClock(t)
  const { log } = recordingLogger()
  const buffer = new StandbyBuffer({ maxTransactions: 10, windowMs: 1000 }, 'main', log, () => clock.now())
  buffer.push(row(1))
  buffer.push(row(2))
  clock.advance(5000)
  buffer.push(row(3))
  t.equal(buffer.after('1'), null, 'older than the window: gone')
  t.equal(buffer.after('2'), null)
  t.same(txids(buffer.after('3')), [])
  clock.advance(60_000)
  buffer.push(row(3, 'b'))
  t.same(txids(buffer.after('3')), [], 'a quiet database\'s last transaction stays, however old')
  t.equal(buffer.overflowed, 0, 'the window drops without counting: nothing was lost')
})

t.test('the buffer drops its oldest past maxTransactions, counted and logged once', async (t) => {
  const clock = fakeClock(t)
  const { log, warnings } = recordingLogger()
  const buffer = new StandbyBuffer({ maxTransactions: 3, windowMs: 60_000 }, 'main', log, () => clock.now())
  for (let x = 1; x <= 2000; x++) buffer.push(row(x))
  t.equal(buffer.size, 3)
  t.equal(buffer.overflowed, 1997)
  t.equal(warnings.filter((w) => w.includes('standby buffer full')).length, 1, 'logged once')
  t.equal(buffer.after('1997'), null, 'dropped')
  t.same(txids(buffer.after('1998')), [1999, 2000])
  buffer.clear()
  t.equal(buffer.size, 0)
})

t.test('a takeover hands on what came after the recorded transaction', async (t) => {
  const { log } = recordingLogger()
  const record = new MemoryRecord()
  const standby = new Standby({ maxTransactions: 100, windowMs: 60_000 }, 'main', record, log)
  standby.start()
  for (let x = 1; x <= 5; x++) standby.buffer.push(row(x))
  await record.write('main', '3')
  const handed: RowChange[][] = []
  t.equal(await standby.takeOver((transactions) => handed.push(...transactions)), true)
  t.same(txids(handed), [4, 5], 'oldest first, only what the old leader had not')
  t.same(standby.handoffs, { gapless: 1, gap: 0 })
  t.equal(standby.listening, false, 'the standby is over')
  t.equal(standby.buffer.size, 0)
})

t.test('a takeover that cannot show nothing is missing hands on nothing', async (t) => {
  const { log, warnings } = recordingLogger()
  const record = new MemoryRecord()
  const cases: Array<[string, (s: Standby) => Promise<void>]> = [
    ['no record', async (s) => { s.start(); s.buffer.push(row(1)) }],
    ['the recorded transaction came before the follower listened', async (s) => { await record.write('main', '1'); s.start(); s.buffer.push(row(2)) }],
    ['the connection was lost since', async (s) => { await record.write('main', '1'); s.start(); s.buffer.push(row(1)); s.stop() }],
    ['the record cannot be read', async (s) => { s.start(); s.buffer.push(row(1)); record.failing = true }]
  ]
  for (const [name, arrange] of cases) {
    record.values.clear()
    record.failing = false
    const standby = new Standby({ maxTransactions: 100, windowMs: 60_000 }, 'main', record, log)
    await arrange(standby)
    let handed = 0
    t.equal(await standby.takeOver(() => { handed++ }), false, name)
    t.equal(handed, 0, `${name}: nothing handed on`)
    t.same(standby.handoffs, { gapless: 0, gap: 1 }, `${name}: a gap counted`)
  }
  t.equal(warnings.filter((w) => w.includes('could not be read')).length, 1, 'an unreadable record is logged')
})

t.test('the leader records a transaction once it and every one before it are routed, the latest only', async (t) => {
  const { log } = recordingLogger()
  const record = new MemoryRecord()
  const handled = new HandledLog('main', record, log)
  const slow = new Deferred()
  handled.track('1', slow.promise)
  handled.track('1', Promise.resolve())
  handled.track('2', Promise.resolve())
  handled.track('3', Promise.resolve())
  await turn()
  t.same(record.writes, [], 'the second waits for the first, still routing')
  slow.resolve()
  await handled.settled()
  t.equal(record.values.get('main'), '3', 'the last one recorded')
  t.ok(record.writes.length <= 3 && record.writes.at(-1) === '3', 'in order')
  const failed = new Deferred()
  handled.track('4', failed.promise)
  failed.reject(new Error('the bus refused it'))
  await handled.settled()
  t.equal(record.values.get('main'), '4', 'a change given up on is handed on too (its watchers were owed a resync)')
})

t.test('a record that fails is counted and logged once; a closing leader does not wait forever', async (t) => {
  const clock = fakeClock(t)
  const { log, warnings } = recordingLogger()
  const record = new MemoryRecord()
  record.failing = true
  const handled = new HandledLog('main', record, log)
  handled.track('1', Promise.resolve())
  await handled.settled()
  handled.track('2', Promise.resolve())
  await handled.settled()
  t.equal(handled.failures, 2)
  t.equal(warnings.filter((w) => w.includes('recording the last published transaction failed')).length, 1)
  handled.track('3', new Promise(() => {}))
  const settling = handled.settled()
  clock.advance(5000)
  await settling
  t.pass('settled after the time a closing leader waits')
})

t.test('a deposed leader records nothing of what it still routes', async (t) => {
  const { log } = recordingLogger()
  const record = new MemoryRecord()
  const handled = new HandledLog('main', record, log)
  handled.track('1', Promise.resolve())
  await handled.settled()
  const routing = new Deferred()
  handled.track('2', routing.promise)
  await turn()
  handled.deposed()
  routing.resolve()
  await handled.settled()
  t.same(record.writes, ['1'], 'the new leader\'s record is not overwritten')
  handled.track('3', Promise.resolve())
  await handled.settled()
  t.same(record.writes, ['1', '3'], 'leading again, it records again')
})

t.test('a follower\'s mark, recorded by the leader in its turn, covers a quiet database', async (t) => {
  const { log } = recordingLogger()
  const record = new MemoryRecord()
  const leader = new HandledLog('main', record, log)
  const follower = new Standby({ maxTransactions: 100, windowMs: 60_000 }, 'main', record, log)
  leader.track('1', Promise.resolve())
  await leader.settled()
  const mark = follower.start()
  t.ok(isMark(mark), 'a mark')
  t.notOk(isMark('standby:' + 'x'.repeat(100)), 'not one this long')
  t.notOk(isMark('{"x":1}'))
  follower.buffer.mark(mark)
  const routing = new Deferred()
  leader.track('2', routing.promise)
  leader.mark(mark)
  await turn()
  t.equal(record.values.get('main'), '1', 'the mark waits for the change before it')
  routing.resolve()
  await leader.settled()
  t.equal(record.values.get('main'), mark)
  t.ok(leader.recorded >= 2, 'recorded writes counted')
  follower.buffer.push(row(3))
  const handed: RowChange[][] = []
  t.equal(await follower.takeOver((transactions) => handed.push(...transactions)), true, 'nothing of before its mark is missing')
  t.same(txids(handed), [3])
})
