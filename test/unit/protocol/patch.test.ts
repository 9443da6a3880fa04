/**
 * `delta` payloads without a socket: the patch the server makes from one document to the next (lib/route/diff.ts)
 * turns the one into the other when the client applies it (lib/protocol/patch.ts), for any two JSON documents, and
 * leaves the document it was applied to as it was; what the patch looks like (minimal, arrays of primitives replaced
 * whole when smaller, RFC 6901 escapes); operations that do not apply throw PatchError; the publisher's cache of
 * last documents (lib/route/deltas.ts): full when it has no base, when the patch is not smaller, past its byte bound.
 */
import t from 'tap'
import fc from 'fast-check'
import { diffDocuments } from '../../../lib/route/diff.js'
import { Deltas } from '../../../lib/route/deltas.js'
import { PatchError, applyPatch, encodeNotification, type PatchOperation } from '../../../lib/protocol/index.js'

/** JSON values as clients parse them: nested objects and arrays, keys that need escaping, every primitive */
const key = fc.oneof(fc.constantFrom('a', 'b', 'c', 'score', '', '~', '/', 'a/b', '~1', '0', '__proto__', 'constructor'), fc.string({ maxLength: 4 }))
const json = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(null, true, false, 0, 1, -1.5, 'x', ''),
    fc.integer(),
    fc.string({ maxLength: 6 }),
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(key, tie('value'), { maxKeys: 5 }))
})).value
/** documents as JSON.parse makes them (an own "__proto__" key is a property, not the prototype) */
const parsed = json.map((v) => JSON.parse(JSON.stringify(v)) as unknown)

t.test('property: applying the diff of two documents to the first gives the second, and leaves the first unchanged', async (t) => {
  fc.assert(fc.property(parsed, parsed, (from, to) => {
    const before = JSON.stringify(from)
    const patch = diffDocuments(from, to)
    const made = applyPatch(from, JSON.parse(JSON.stringify(patch)) as PatchOperation[])
    t.equal(JSON.stringify(from), before)
    return JSON.stringify(made) === JSON.stringify(to) || isDeepStrictEqualJson(made, to)
  }), { numRuns: 2000 })
})

t.test('property: a document changed in a few places gets a patch of about that many operations', async (t) => {
  const doc = fc.dictionary(fc.string({ minLength: 1, maxLength: 5 }), parsed, { minKeys: 3, maxKeys: 8 })
  fc.assert(fc.property(doc, fc.string({ minLength: 1, maxLength: 5 }), fc.integer(), (from, changed, value) => {
    const to = { ...from, [changed]: value }
    const patch = diffDocuments(from, to)
    t.ok(patch.length <= 1)
    return isDeepStrictEqualJson(applyPatch(from, patch), to)
  }), { numRuns: 300 })
})

/** equality of JSON values regardless of key order */
function isDeepStrictEqualJson (a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a)
  const kb = Object.keys(b)
  if (ka.length !== kb.length) return false
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && isDeepStrictEqualJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}

t.test('the patch of a score change is one replace; keys are escaped as RFC 6901 says', async (t) => {
  const match = { home: { name: 'Red', score: 3 }, away: { name: 'Blue', score: 0 }, 'a/b~c': 1 }
  t.same(diffDocuments(match, { ...match, home: { name: 'Red', score: 5 } }), [{ op: 'replace', path: '/home/score', value: 5 }])
  t.same(diffDocuments(match, { ...match, 'a/b~c': 2 }), [{ op: 'replace', path: '/a~1b~0c', value: 2 }])
  t.same(diffDocuments(match, { home: match.home, away: match.away, extra: [1] }), [
    { op: 'remove', path: '/a~1b~0c' },
    { op: 'add', path: '/extra', value: [1] }
  ], 'a key gone, a key new')
  t.same(diffDocuments(match, match), [], 'nothing changed')
  t.same(diffDocuments({ a: { b: 1 } }, { a: [1] }), [{ op: 'replace', path: '/a', value: [1] }], 'a type change is a replace')
  t.same(diffDocuments({ a: 1 }, [1]), [{ op: 'replace', path: '', value: [1] }], 'the root changing type: the whole document')
})

t.test('arrays: appended and cut off at the end; replaced whole when that is smaller', async (t) => {
  t.same(diffDocuments({ l: [1, 2] }, { l: [1, 2, 3] }), [{ op: 'add', path: '/l/2', value: 3 }])
  const long = ['a long string', 'another long string', 'a third long string', 'a fourth long string']
  t.same(diffDocuments({ l: long }, { l: long.slice(0, 2) }), [{ op: 'remove', path: '/l/3' }, { op: 'remove', path: '/l/2' }])
  t.same(diffDocuments({ l: [1, 2, 3, 4] }, { l: [1, 2] }), [{ op: 'replace', path: '/l', value: [1, 2] }], 'numbers: the array is smaller')
  t.same(diffDocuments({ l: [1, 2, 3] }, { l: [0, 1, 2, 3] }), [{ op: 'replace', path: '/l', value: [0, 1, 2, 3] }], 'an insert at the front')
  t.same(diffDocuments({ l: [{ n: 1, s: 'long text here' }, { n: 2, s: 'more long text' }] }, { l: [{ n: 1, s: 'long text here' }, { n: 3, s: 'more long text' }] }),
    [{ op: 'replace', path: '/l/1/n', value: 3 }], 'an object in an array is patched inside')
})

t.test('applyPatch: what does not apply throws PatchError; __proto__ is a key like any other', async (t) => {
  const doc = { a: [1, 2], b: { c: 1 } }
  const bad: unknown[] = [
    [{ op: 'replace', path: '/x', value: 1 }],
    [{ op: 'remove', path: '/b/x' }],
    [{ op: 'replace', path: '/a/2', value: 1 }],
    [{ op: 'add', path: '/a/3', value: 1 }],
    [{ op: 'add', path: '/a/01', value: 1 }],
    [{ op: 'replace', path: '/a/x', value: 1 }],
    [{ op: 'add', path: '/x/y', value: 1 }],
    [{ op: 'add', path: '/a/0/y', value: 1 }],
    [{ op: 'move', from: '/a', path: '/b' }],
    [{ op: 'add', path: '/x' }],
    [{ op: 'remove', path: '' }],
    [{ op: 'add', path: 'x', value: 1 }],
    [{ path: '/a' }],
    [null],
    [{ op: 'replace', path: '/toString', value: 1 }],
    [{ op: 'add', path: '/constructor/x', value: 1 }],
    { op: 'add', path: '/x', value: 1 }
  ]
  for (const patch of bad) t.throws(() => applyPatch(doc, patch as PatchOperation[]), PatchError, JSON.stringify(patch))
  t.throws(() => applyPatch(3, [{ op: 'add', path: '/x', value: 1 }]), PatchError, 'no container at the root')
  t.same(doc, { a: [1, 2], b: { c: 1 } }, 'a failed patch changed nothing')

  const polluted = applyPatch({}, [{ op: 'add', path: '/__proto__', value: { polluted: true } }, { op: 'add', path: '/__proto__/x', value: 1 }])
  t.same(Object.keys(polluted as object), ['__proto__'])
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype was changed')
  t.equal(Object.getPrototypeOf(polluted), Object.prototype)
  t.same(applyPatch({ a: [1] }, [{ op: 'add', path: '/a/-', value: 2 }, { op: 'add', path: '/a/0', value: 0 }]), { a: [0, 1, 2] }, '"-" is the end')
  t.same(applyPatch({ a: 1 }, [{ op: 'replace', path: '', value: [1] }]), [1], 'the whole document')
})

t.test('applyPatch shares what the patch does not touch and copies each container it touches once', async (t) => {
  const doc = { kept: { deep: [1] }, changed: { n: 1, m: 1 } }
  const made = applyPatch(doc, [{ op: 'replace', path: '/changed/n', value: 2 }, { op: 'replace', path: '/changed/m', value: 2 }]) as typeof doc
  t.equal(made.kept, doc.kept, 'an untouched subtree is the same object')
  t.not(made.changed, doc.changed)
  t.same(made.changed, { n: 2, m: 2 })
  t.same(doc.changed, { n: 1, m: 1 })
})

const fields = (position: string) => ({ entityType: 'Match', entityId: 'm1', tenantId: null, changeType: 'updated' as const, ts: 0, position })
const fullOf = (position: string, document: unknown): string => encodeNotification({ ...fields(position), payloadType: 'full', payload: document })

t.test('Deltas: a patch from the document kept at the last position; full when it has none or the patch is larger', async (t) => {
  const deltas = new Deltas(1 << 20)
  const big = { home: 0, away: 0, text: 'x'.repeat(500) }
  t.equal(deltas.frameOf('k', fields('n:1'), big, fullOf('n:1', big)), null, 'the first change: nothing to patch')
  const next = { ...big, home: 1 }
  const delta = deltas.frameOf('k', fields('n:2'), next, fullOf('n:2', next))
  t.equal(delta?.base, 'n:1')
  t.same(JSON.parse(delta?.frame ?? '{}').data, {
    entityType: 'Match',
    entityId: 'm1',
    changeType: 'updated',
    payloadType: 'delta',
    timestamp: new Date(0).toISOString(),
    position: 'n:2',
    basePosition: 'n:1',
    patch: [{ op: 'replace', path: '/home', value: 1 }]
  })
  t.equal(deltas.frameOf('k', fields('n:2'), next, fullOf('n:2', next)), null, 'the same position again: full')
  const small = { a: 1 }
  t.equal(deltas.frameOf('k', fields('n:3'), small, fullOf('n:3', small)), null, 'a patch not smaller than the document: full')
  t.equal(deltas.frameOf('k', fields('n:4'), undefined, fullOf('n:4', null)), null, 'deleted: no patch')
  t.equal(deltas.frameOf('k', fields('n:5'), small, fullOf('n:5', small)), null, 'and after it, no base')
  t.same(deltas.counters, { patches: 1, misses: 3, larger: 1, evicted: 0, stale: 0 })
})

t.test('Deltas: a change whose document is a later version than its position is no base: the next change is full', async (t) => {
  const deltas = new Deltas(1 << 20)
  const doc = (n: number): Record<string, unknown> => ({ n, text: 'x'.repeat(500) })
  deltas.frameOf('k', fields('n:1'), doc(1), fullOf('n:1', doc(1)))
  deltas.stale('k')
  t.equal(deltas.bytes, 0, 'the kept document is dropped')
  t.equal(deltas.frameOf('k', fields('n:3'), doc(3), fullOf('n:3', doc(3))), null, 'the next change: full')
  t.not(deltas.frameOf('k', fields('n:4'), doc(4), fullOf('n:4', doc(4))), null, 'then patches again')
  t.equal(deltas.counters.stale, 1)
})

t.test('Deltas: bounded by deltaCacheBytes, the least recently changed entity dropped first', async (t) => {
  const doc = { n: 1, text: 'y'.repeat(200) }
  const size = fullOf('n:1', doc).length
  const deltas = new Deltas(size * 2)
  deltas.frameOf('a', fields('n:1'), doc, fullOf('n:1', doc))
  deltas.frameOf('b', fields('n:1'), doc, fullOf('n:1', doc))
  deltas.frameOf('c', fields('n:1'), doc, fullOf('n:1', doc))
  t.equal(deltas.counters.evicted, 1)
  t.ok(deltas.bytes <= size * 2)
  const changed = { n: 2, text: doc.text }
  t.equal(deltas.frameOf('a', fields('n:2'), changed, fullOf('n:2', changed)), null, 'evicted: full')
  t.not(deltas.frameOf('c', fields('n:2'), changed, fullOf('n:2', changed)), null, 'kept: a patch')
  deltas.forget('c')
  deltas.forget('nothing')
  t.equal(new Deltas(0).frameOf('a', fields('n:1'), doc, fullOf('n:1', doc)), null, '0 bytes: nothing kept')
})
