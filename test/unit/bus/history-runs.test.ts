/**
 * The runs of recent resumes (lib/bus/history-runs.ts): a subject's run keeps its `size` last messages and none older
 * than asked, and the runs together stay within their bytes, the least recently used dropped first.
 */
import t from 'tap'
import { HistoryRuns, isAt, type Link } from '../../../lib/bus/history-runs.js'

const link = (seq: number, time = 1000, message: string | null = 'x'.repeat(100)): Link => ({ seq, position: `e:${seq}`, kept: '', message, time })

t.test('a run keeps its last `size` messages, and none older than asked', async (t) => {
  const runs = new HistoryRuns(1_000_000)
  runs.put('a', [1, 2, 3, 4, 5].map((seq) => link(seq, seq * 1000)), 3)
  t.same(runs.get('a', 0)?.links.map((l) => l.seq), [3, 4, 5], 'the subject\'s size')
  t.same(runs.get('a', 4000)?.links.map((l) => l.seq), [4, 5], 'aged out from its start')
  t.same(runs.get('a', 0)?.links.map((l) => l.seq), [4, 5], 'and gone')
  t.equal(runs.get('a', 10_000), undefined, 'all aged out: no run')
  t.equal(runs.bytes, 0, 'nothing held')
  runs.put('r', [5, 6].map((seq) => link(seq)), 3, 2)
  t.equal(runs.get('r', 0)?.reach, 2, 'known from before its first message')
  runs.put('r', [5, 6, 7, 8].map((seq) => link(seq)), 3, 2)
  t.equal(runs.get('r', 0)?.reach, 6, 'its first ones not kept: known from its first')
  runs.put('b', [], 3)
  t.equal(runs.get('b', 0), undefined, 'an empty run is none')
})

t.test('the runs stay within their bytes: the least recently used go first; one run at most an eighth', async (t) => {
  const one = [link(1), link(2)]
  const probe = new HistoryRuns(Infinity)
  probe.put('x', one, 10)
  const size = probe.bytes
  t.ok(size > 400, `${size} bytes for two messages of 100 characters`)

  const runs = new HistoryRuns(size * 16)
  const key = (i: number): string => String.fromCharCode(97 + i)
  for (let i = 0; i < 16; i++) runs.put(key(i), one, 10)
  t.equal(runs.bytes, size * 16, 'full')
  runs.get(key(0), 0)
  runs.put(key(16), one, 10)
  t.equal(runs.get(key(1), 0), undefined, 'the least recently used dropped')
  t.ok(runs.get(key(0), 0) !== undefined && runs.get(key(16), 0) !== undefined, 'the others kept')
  t.equal(runs.bytes, size * 16)
  runs.put(key(0), [link(3)], 10)
  t.ok(runs.bytes < size * 16, 'a run replaced counts its new size')
  runs.drop(key(0))
  runs.drop(key(0))
  t.equal(runs.bytes, size * 15, 'dropped once')
  runs.clear()
  t.equal(runs.bytes, 0, 'cleared')

  const long = Array.from({ length: 10 }, (_, i) => link(i + 1))
  runs.put('long', long, 100)
  t.same(runs.get('long', 0)?.links.map((l) => l.seq), [7, 8, 9, 10], 'a run past an eighth keeps its newest messages')
  t.ok(runs.bytes <= size * 2)
})

t.test('a link stands at its position, or, a keep-alive, at the one it stands in for', async (t) => {
  t.ok(isAt(link(7), 'e:7'))
  t.notOk(isAt(link(7), 'e:8'))
  t.ok(isAt({ ...link(9, 1000, null), kept: 'e:7' }, 'e:7'))
})
