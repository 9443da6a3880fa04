/**
 * `delta` payloads against the real PostgreSQL (and Redis): a socket's first notification of an entity is full, the
 * next ones patches on the document it was sent last, with `basePosition`; a socket that joins later, subscribes
 * again, watches a feed, or would get a patch no smaller than the document gets full; deleted carries no patch; a
 * host's publish is patched between documents as clients parse them; a socket that stops reading gets a chain of
 * frames that still applies (held patches merged into full documents). Then a property: random document changes
 * through two instances on Redis to SDK clients that join at random times and lose their connection midway; every
 * document a client hands out equals the database's at that version; and after the publisher fails over, full
 * again.
 */
import t from 'tap'
import fc from 'fast-check'
import WebSocket from 'ws'
import { randomUUID } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import type pg from 'pg'
import { ChangefeedClient, type Notification } from '../../../lib/client/index.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { REDIS_URL } from '../../helpers/brokers.js'
import { isNotification, type Frame } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import { follow } from '../../helpers/follow.js'

/** Writes a document in its own transaction; returns its position (without history), its version, and the document as the database holds it. */
async function write (sql: pg.Client, id: string, data: unknown): Promise<{ position: string, version: string, stored: unknown }> {
  await sql.query('BEGIN')
  const { rows: [row] } = await sql.query(`INSERT INTO mt_doc_match (id, data) VALUES ($1, $2)
    ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid() RETURNING data, mt_version::text AS version, txid_current()::text AS txid`, [id, JSON.stringify(data)])
  await sql.query('COMMIT')
  return { position: 'n:' + String(row.txid), version: row.version, stored: row.data }
}

/** Deletes; returns the version the deletion names. */
async function remove (sql: pg.Client, id: string): Promise<string> {
  await sql.query('BEGIN')
  const { rows: [row] } = await sql.query('DELETE FROM mt_doc_match WHERE id = $1 RETURNING mt_version::text AS version', [id])
  await sql.query('COMMIT')
  return row.version
}

/** A live match document of a few kilobytes, as the demo's. */
function matchDoc (home = 0, clock = 0): Record<string, unknown> {
  const players = (team: string): unknown[] => Array.from({ length: 15 }, (_, i) => ({ number: i + 1, name: `${team} player ${i + 1}`, tries: 0, tackles: 0 }))
  return { home: { name: 'Red Lions', score: home, players: players('Red') }, away: { name: 'Blue Sharks', score: 0, players: players('Blue') }, clock, venue: 'Stadium', status: 'live' }
}

t.test('one server', async (t) => {
  const url = await freshDatabase(t, 'delta')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_match'))
  const { app, client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: {
      Match: { access: 'public', payload: 'delta', feed: true },
      Board: { access: 'public', payload: 'delta' }
    },
    // positions as the writer knows them (its transaction): no channel history; resumes from it are tested apart
    history: { size: 0 },
    limits: { conflateAboveBytes: 32 * 1024, maxBufferedBytes: 8 * 1024 * 1024, maxHeldFrames: 10_000 }
  })

  t.test('full first, then patches with basePosition; a later socket, a repeated subscribe and a delete get full', async (t) => {
    const ws = await client()
    await ws.subscribe('Match', 'm1')
    const first = await write(sql, 'm1', matchDoc())
    const created = await ws.next(isNotification('Match', 'm1'))
    t.match(created.data, { changeType: 'created', payloadType: 'full', position: first.position, payload: first.stored })
    t.notOk('patch' in created.data)

    const second = await write(sql, 'm1', matchDoc(7))
    const scored = await ws.next(isNotification('Match', 'm1'))
    t.match(scored.data, { changeType: 'updated', payloadType: 'delta', position: second.position, basePosition: first.position, patch: [{ op: 'replace', path: '/home/score', value: 7 }] })
    t.type(scored.data.version, 'string')
    t.notOk('payload' in scored.data, 'a patch, not the document')
    const [fullBytes, deltaBytes] = [created, scored].map((frame) => Buffer.byteLength(JSON.stringify(frame)))
    t.ok(fullBytes >= 2048, `a document of ${fullBytes} bytes`)
    t.ok(deltaBytes <= fullBytes * 0.2, `a score change: ${deltaBytes} bytes, ≤ 20 % of ${fullBytes}`)

    const late = await client()
    await late.subscribe('Match', 'm1')
    const third = await write(sql, 'm1', matchDoc(7, 1))
    t.match((await late.next(isNotification('Match', 'm1'))).data, { payloadType: 'full', position: third.position, payload: third.stored }, 'joined later: full')
    t.match((await ws.next(isNotification('Match', 'm1'))).data, { payloadType: 'delta', basePosition: second.position, patch: [{ op: 'replace', path: '/clock', value: 1 }] })

    t.equal((await ws.subscribe('Match', 'm1', 'again')).type, 'subscribed')
    const fourth = await write(sql, 'm1', matchDoc(7, 2))
    t.match((await ws.next(isNotification('Match', 'm1'))).data, { payloadType: 'full', payload: fourth.stored }, 'subscribed again: full')
    t.match((await late.next(isNotification('Match', 'm1'))).data, { payloadType: 'delta', basePosition: third.position })

    const small = await write(sql, 'm1', { other: 'document' })
    t.match((await ws.next(isNotification('Match', 'm1'))).data, { payloadType: 'full', payload: small.stored }, 'a patch not smaller than the document: full')
    await late.next(isNotification('Match', 'm1'))

    await remove(sql, 'm1')
    const deleted = await ws.next(isNotification('Match', 'm1'))
    t.match(deleted.data, { changeType: 'deleted', payloadType: 'full', payload: null })
    t.notOk('patch' in deleted.data, 'deleted carries no patch')
    const again = await write(sql, 'm1', matchDoc())
    t.match((await ws.next(isNotification('Match', 'm1'))).data, { changeType: 'created', payloadType: 'full', payload: again.stored }, 'created after it: full')
    const stats = app.changefeed.stats()
    t.ok(stats.deltas.patches >= 3 && stats.deltas.larger >= 1 && stats.deltas.cacheBytes > 0, JSON.stringify(stats.deltas))
  })

  t.test('a feed gets full documents; the entity\'s own subscription on the same socket gets the patches', async (t) => {
    const ws = await client()
    await ws.subscribe('Match', '*')
    await ws.subscribe('Match', 'm2', 'own')
    await write(sql, 'm2', matchDoc())
    await write(sql, 'm2', matchDoc(3))
    const frames: Frame[] = []
    for (let i = 0; i < 4; i++) frames.push(await ws.next(isNotification('Match', 'm2')))
    t.same(frames.map((f) => f.data.payloadType).sort(), ['delta', 'full', 'full', 'full'], 'two full for the feed, full then a patch for the entity')
  })

  t.test('a host\'s publish: patched between documents as clients parse them', async (t) => {
    const ws = await client()
    await ws.subscribe('Board', 'b1')
    const text = 'commentary '.repeat(50)
    await app.changefeed.publish({ entityType: 'Board', entityId: 'b1', changeType: 'updated', payload: { at: new Date(0), n: 1, text, skip: undefined } })
    t.match((await ws.next(isNotification('Board', 'b1'))).data, { payloadType: 'full', payload: { at: new Date(0).toISOString(), n: 1, text } })
    await app.changefeed.publish({ entityType: 'Board', entityId: 'b1', changeType: 'updated', payload: { at: new Date(0), n: 2, text } })
    t.match((await ws.next(isNotification('Board', 'b1'))).data, { payloadType: 'delta', patch: [{ op: 'replace', path: '/n', value: 2 }] },
      'the Date is its JSON string on both sides: only n changed')
    await app.changefeed.publish({ entityType: 'Board', entityId: 'b1', changeType: 'deleted', payload: null })
    t.match((await ws.next(isNotification('Board', 'b1'))).data, { payloadType: 'full', payload: null })
  })

  t.test('a socket that stops reading gets frames that still apply, held patches merged into full documents', async (t) => {
    const slow = await client()
    const reader = await client()
    await slow.subscribe('Board', 'b2')
    await reader.subscribe('Board', 'b2')
    const socket = (slow.ws as unknown as { _socket: { pause(): void, resume(): void } })._socket
    // a patch of 4 KB on a document of 8 KB: thousands of them fill the paused socket's kernel buffers
    const fixed = { a: 'a'.repeat(2000), b: 'b'.repeat(2000) }
    const docOf = (seq: number): Record<string, unknown> => ({ seq, ...fixed, c: String(seq).padStart(4000, 'c') })
    await app.changefeed.publish({ entityType: 'Board', entityId: 'b2', changeType: 'updated', payload: docOf(0) })
    t.ok(await until(() => slow.messages.some(isNotification('Board', 'b2'))))
    socket.pause()
    const last = 5000
    for (let seq = 1; seq <= last; seq++) {
      await app.changefeed.publish({ entityType: 'Board', entityId: 'b2', changeType: 'updated', payload: docOf(seq) })
      if (seq % 10 === 0 && !await until(() => reader.messages.length > seq, 10_000)) return t.fail('the reader fell behind')
    }
    t.ok(app.changefeed.stats().connections.conflated > 0, 'the slow socket\'s frames were conflated')
    socket.resume()
    const lastPosition = reader.messages.at(-1)?.data.position
    t.ok(await until(() => slow.messages.some((m) => m.type === 'notification' && m.data.position === lastPosition), 20_000), 'the slow socket reads again, up to the last change')
    const chain = follow([...slow.messages.filter(isNotification('Board', 'b2'))])
    t.same(chain.document, docOf(last), `the slow socket's frames apply as a chain (${chain.full} full, ${chain.delta} patches) to the latest document`)
    t.ok(chain.full >= 1 && chain.delta >= 1 && chain.refused + chain.failed === 0, JSON.stringify(chain, ['full', 'delta', 'refused', 'failed']))
    const read = follow([...reader.messages.filter(isNotification('Board', 'b2'))])
    t.same(read.document, docOf(last), `and so do the reader's (${read.full} full, ${read.delta} patches)`)
    t.ok(read.delta > 0 && read.refused + read.failed === 0)
  })
})

/** One SDK client of the property: what it handed out, and whether it is subscribed (again, after a reconnect). */
interface Receiver {
  client: ChangefeedClient
  got: Array<{ version: string | undefined, payload: unknown, payloadType: string }>
  ready: () => boolean
  drop: () => void
  /** resyncs its holders were told of */
  resyncs: () => number
}

function watcher (t: { teardown(fn: () => unknown): void }, url: string, entityId: string): Receiver {
  const sockets: WebSocket[] = []
  /** sockets the server answered a subscribe on (a resume that recovered tells the application nothing) */
  const answered = new Set<WebSocket>()
  class Tracked extends WebSocket {
    constructor (address: string) {
      super(address)
      sockets.push(this)
      this.on('message', (data) => { if ((JSON.parse(data.toString()) as { type: string }).type === 'subscribed') answered.add(this) })
    }
  }
  const client = new ChangefeedClient({ url, WebSocket: Tracked as never, backoff: { initialMs: 20, maxMs: 100 } })
  t.teardown(() => client.destroy())
  const got: Receiver['got'] = []
  let dropped = false
  let resyncs = 0
  const store = client.subscribe('Match', entityId, {
    onNotification: (n: Notification) => got.push({ version: n.version, payload: n.payload, payloadType: n.payloadType }),
    onResync: () => { resyncs++ }
  })
  return {
    client,
    got,
    resyncs: () => resyncs,
    ready: () => store.getSnapshot().status === 'subscribed' && (!dropped || answered.has(sockets.at(-1)!)),
    drop: () => {
      // a socket that is open: the client has had one, and its next one is a reconnect
      const socket = sockets.at(-1)
      if (socket?.readyState !== WebSocket.OPEN) return
      dropped = true
      socket.terminate()
    }
  }
}

/** A change of the property: set a path (a key of a nested object, an index of an array) to a value, or delete. */
interface Step { path: string[], value?: unknown, deleteRow: boolean }

const unit = fc.constantFrom('a', 'b', '/', '~', ' ', 'é', '1')
const value = fc.letrec((tie) => ({
  json: fc.oneof({ depthSize: 'small' },
    fc.constantFrom(null, true, false, 0, 7, 'x'),
    fc.integer({ min: -1000, max: 1000 }),
    fc.string({ unit, maxLength: 8 }),
    fc.array(tie('json'), { maxLength: 4 }),
    fc.dictionary(fc.string({ unit, maxLength: 3 }), tie('json'), { maxKeys: 4 }))
})).json
const step: fc.Arbitrary<Step> = fc.record({
  path: fc.tuple(fc.constantFrom('score', 'team', 'list', 'stats'), fc.array(fc.constantFrom('a', 'b', '0', '1', 'x/y', 'm~n'), { maxLength: 3 })).map(([head, rest]) => [head, ...rest]),
  value: fc.option(value, { nil: undefined, freq: 5 }),
  deleteRow: fc.nat(9).map((n) => n === 0)
})

/** The document after a step: the path is made where it is missing (an object), a value of another type replaced. */
function applyStep (document: Record<string, unknown>, { path, value }: Step): Record<string, unknown> {
  const root = structuredClone(document)
  let parent: Record<string, unknown> | unknown[] = root
  const put = (container: Record<string, unknown> | unknown[], key: string, v: unknown): void => {
    if (Array.isArray(container)) {
      const i = Math.min(/^\d+$/.test(key) ? Number(key) : container.length, container.length)
      if (v === undefined) container.splice(i, 1)
      else container[i] = v
    } else if (v === undefined) delete container[key]
    else container[key] = v
  }
  for (const key of path.slice(0, -1)) {
    const child: unknown = Array.isArray(parent) ? parent[Number(key)] : parent[key]
    if (typeof child === 'object' && child !== null) parent = child as Record<string, unknown>
    else {
      const made = {}
      put(parent, key, made)
      parent = made
    }
  }
  put(parent, path[path.length - 1], value)
  return root
}

t.test('property: two instances on Redis, SDK clients joining at random times and reconnecting midway', async (t) => {
  const url = await freshDatabase(t, 'delta_cluster')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_match'))
  const options = {
    databases: [{ name: 'main', url }],
    capture: { channel: 'delta:changes', leaderRetryMs: 100 },
    entities: { Match: { access: 'public' as const, payload: 'delta' as const } },
    bus: { provider: 'redis' as const, url: REDIS_URL, prefix: `delta-${randomUUID().slice(0, 8)}` }
  }
  const instances = [await startApp(t, options), await startApp(t, options)]
  const leading = (): number => instances.findIndex((i) => i.app.changefeed.stats().listeners.main?.state === 'listening')
  t.ok(await until(() => leading() >= 0), 'one instance leads')
  let run = 0
  let patches = 0

  await fc.assert(fc.asyncProperty(
    fc.array(step, { minLength: 10, maxLength: 40 }),
    fc.array(fc.record({ join: fc.nat(40), instance: fc.nat(1), drop: fc.option(fc.nat(40), { nil: undefined }) }), { minLength: 2, maxLength: 4 }),
    async (steps, plans) => {
      const id = `p-${run++}`
      const atVersion = new Map<string, unknown>()
      const deleted = new Set<string>()
      const watchers: Array<Receiver | undefined> = plans.map(() => undefined)
      let document: Record<string, unknown> = { notes: 'n'.repeat(1500), score: { home: 0, away: 0 } }
      let exists = false
      for (const [i, s] of [...steps, null].entries()) {
        for (const [w, plan] of plans.entries()) {
          if (plan.join === i || (i === steps.length && watchers[w] === undefined)) watchers[w] = watcher(t, instances[plan.instance].url, id)
          if (plan.drop === i && plan.join < i) watchers[w]?.drop()
        }
        if (s === null) break
        if (s.deleteRow && exists) {
          // a deletion names the version it deleted
          deleted.add(await remove(sql, id))
          exists = false
          continue
        }
        document = applyStep(document, s)
        const { version, stored } = await write(sql, id, document)
        atVersion.set(version, stored)
        exists = true
      }
      // the last change, once every client is subscribed: every one of them must end on it
      if (!await until(() => watchers.every((w) => w?.ready() === true), 10_000)) return false
      const final = await write(sql, id, { ...document, final: true })
      atVersion.set(final.version, final.stored)
      const ended = await until(() => watchers.every((w) => w?.got.at(-1)?.version === final.version), 10_000)
      for (const w of watchers) {
        for (const { version, payload } of w?.got ?? []) {
          if (payload === null && version !== undefined && deleted.has(version)) continue
          if (version === undefined || !atVersion.has(version) || !isDeepStrictEqual(payload, atVersion.get(version))) {
            t.fail(`a client handed out a document that is not the database's at version ${String(version)}`, { found: payload, wanted: atVersion.get(version ?? '') })
            return false
          }
        }
        patches += w?.got.filter((g) => g.payloadType === 'delta').length ?? 0
        w?.client.destroy()
      }
      return ended
    }), { numRuns: 6, endOnFailure: true })
  t.ok(patches > 0, `patches were applied (${patches})`)

  t.test('after the publisher fails over, the first change is full again (the new one has no document to patch)', async (t) => {
    const id = 'failover'
    const survivor = 1 - leading()
    const w = watcher(t, instances[survivor].url, id)
    t.ok(await until(() => w.ready()))
    await write(sql, id, matchDoc())
    await write(sql, id, matchDoc(1))
    t.ok(await until(() => w.got.length === 2))
    t.same(w.got.map((g) => g.payloadType), ['full', 'delta'])
    await instances[1 - survivor].app.close()
    t.ok(await until(() => leading() === survivor, 10_000), 'the other instance leads')
    const after = await write(sql, id, matchDoc(2))
    // the new publisher announces that changes may have been lost: the client resumes, and as no resume may pass that
    // moment, its holders may be told to refetch instead of being handed the change
    t.ok(await until(() => w.got.some((g) => g.version === after.version) || w.resyncs() > 0, 10_000))
    const next = await write(sql, id, matchDoc(3))
    t.ok(await until(() => w.got.at(-1)?.version === next.version, 10_000))
    const first = w.got.slice(2)[0]
    // unless the client was told to refetch (then the document it read is the patch's base)
    if (w.resyncs() === 0) t.equal(first?.payloadType, 'full', 'the first change after it is whole')
    t.ok(w.got.slice(2).every((g) => isDeepStrictEqual(g.payload, [after, next].find((c) => c.version === g.version)?.stored)), 'and the database\'s')
    const last = await write(sql, id, matchDoc(4))
    t.ok(await until(() => w.got.at(-1)?.version === last.version))
    t.equal(w.got.at(-1)?.payloadType, 'delta', 'then patches again')
  })
})
