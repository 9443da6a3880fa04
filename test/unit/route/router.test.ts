/**
 * Routing without services: captured changes reach the bus in the order they came, across entities too, however
 * long the work of one of them takes (a document too large for the NOTIFY is read first). A feed's watchers, and
 * the "seen until the first unseen" rule of snapshots and filters, depend on that order. A channel with history that
 * nobody watches starts its history again before the change passes it by, and one watched meanwhile gets the change.
 */
import t from 'tap'
import { ChangeRouter } from '../../../lib/route/router.js'
import { EntityRegistry } from '../../../lib/entities.js'
import { Notices } from '../../../lib/route/notices.js'
import { Drops } from '../../../lib/route/drops.js'
import { resolveOptions } from '../../../lib/options.js'
import type { Database } from '../../../lib/capture/database.js'
import type { Change } from '../../../lib/capture/coalesce.js'
import type { PubSub } from '../../../lib/bus/index.js'
import type { InterestStore } from '../../../lib/interest/interest.js'
import { unwrap } from '../../../lib/route/envelope.js'
import { watchedOf } from '../../../lib/route/watched.js'
import { Deferred, recordingLogger, turn } from '../fixtures/fakes.js'

const options = resolveOptions({ databases: [{ name: 'main', url: 'postgres://unused/main' }], entities: { Player: { access: 'public', payload: 'full', feed: true } } })

function change (id: string, txid: number, inline: boolean): Change {
  return {
    database: 'main',
    schema: 'public',
    table: 'mt_doc_player',
    id,
    tenantId: null,
    changeType: 'updated',
    txid: String(txid),
    position: `n:${txid}`,
    version: null,
    ts: 1,
    origin: null,
    hasDoc: inline,
    ...(inline ? { doc: { n: txid } } : {})
  }
}

/** A router on fakes: `read` holds every document read until the test resolves it. */
function routerWith (read: Deferred, stream: Array<{ entityId: string, position: string }> | null = null, scan: Promise<void> = Promise.resolve()): { router: ChangeRouter, published: string[], registry: EntityRegistry } {
  const db = {
    name: 'main',
    async query<R>(): Promise<R[]> {
      await read.promise
      return [{ data: { n: 1 }, txid: '1' }] as R[]
    }
  } as unknown as Database
  const registry = new EntityRegistry(options)
  const { log } = recordingLogger()
  const published: string[] = []
  const bus = { provider: 'memory', ready: true, publish: async (channel: string, message: string) => { if (!channel.endsWith(':*')) published.push(String(unwrap(message)?.position)) } } as unknown as PubSub
  const interest = { local: true, isWatched: async () => true } as unknown as InterestStore
  const sink = stream === null ? null : { ready: true, publish: async (record: { entityId: string, position: string }) => { stream.push({ entityId: record.entityId, position: record.position }) } }
  const router = new ChangeRouter({
    registry,
    notices: new Notices(registry, new Map([['main', db]]), () => null, new Drops(log)),
    interest,
    bus,
    prefix: 'cf',
    log,
    scanner: { rescanDatabase: async () => { await scan } },
    stream: sink,
    instanceId: 'instance-1',
    deltaCacheBytes: 0
  })
  return { router, published, registry }
}

t.test('a host\'s publish takes the same route: its turn behind a captured change being read, and the stream', async (t) => {
  const read = new Deferred()
  const streamed: Array<{ entityId: string, position: string }> = []
  const { router, published } = routerWith(read, streamed)
  void router.routeCaptured(change('big', 1, false))
  const publishing = router.publish({ entityType: 'Player', entityId: 'live', changeType: 'updated', payload: { n: 2 } })
  for (let i = 0; i < 20; i++) await turn()
  t.same(published, [], 'the publish waits for the captured change before it')
  read.resolve()
  t.equal(await publishing, true, 'handed to the bus')
  t.same(published, ['n:1', 'p:instance:1'])
  t.same(streamed.map((s) => s.entityId), ['big', 'live'], 'both on the stream of every change, in that order')
  await t.rejects(router.publish({ entityType: 'Player', entityId: '', changeType: 'updated' }), { code: 'CHANGEFEED_INVALID_CHANGE' })
  await t.rejects(router.publish({ entityType: 'Nope', entityId: 'x', changeType: 'updated' }), { code: 'CHANGEFEED_UNKNOWN_ENTITY_TYPE' })
})

t.test('a change that waits for its document read is not overtaken by the changes after it', async (t) => {
  const read = new Deferred()
  const { router, published } = routerWith(read)
  void router.routeCaptured(change('big', 1, false))
  void router.routeCaptured(change('a', 2, true))
  void router.routeCaptured(change('b', 3, true))
  for (let i = 0; i < 20; i++) await turn()
  t.same(published, [], 'nothing leaves ahead of the change being read')
  read.resolve()
  for (let i = 0; i < 20; i++) await turn()
  t.same(published, ['n:1', 'n:2', 'n:3'], 'in the order they came')
})

t.test('a change whose table was made a moment ago waits for a scan; a later change of its entity waits behind it, not the other way round', async (t) => {
  const scan = new Deferred()
  const { router, published, registry } = routerWith(new Deferred(), null, scan.promise)
  const coach = (txid: number): Change => ({ ...change('c-1', txid, true), table: 'mt_doc_coach' })
  void router.routeCaptured(coach(1))
  for (let i = 0; i < 5; i++) await turn()
  // the type is found meanwhile (another scan, the event trigger's note): the next change knows it at once
  registry.discover('main', 'public', 'mt_doc_coach', null, false)
  void router.routeCaptured(coach(2))
  for (let i = 0; i < 20; i++) await turn()
  t.same(published, [], 'the later change waits for the earlier one')
  scan.resolve()
  for (let i = 0; i < 20; i++) await turn()
  t.same(published, ['n:1', 'n:2'], 'both leave, in the order they came')
})

t.test('the channels a change goes to: those watched; one with history nobody watches starts it again first', async (t) => {
  const watching = new Set(['entity'])
  const resets: string[] = []
  const interest = { isWatched: (channel: string) => watching.has(channel) }
  const history = { reset: async (channel: string) => { resets.push(channel) } }
  t.same(await watchedOf(interest, ['entity', 'feed'], null), ['entity'], 'no history: only the watched, nothing reset')
  t.same(resets, [])
  watching.add('feed')
  t.same(await watchedOf(interest, ['entity', 'feed'], history), ['entity', 'feed'], 'all watched: nothing reset')
  t.same(resets, [])
  watching.delete('entity')
  t.same(await watchedOf(interest, ['entity', 'feed'], history), ['feed'])
  t.same(resets, ['entity'], 'the unwatched channel\'s history starts again')
  // a watcher arrives while the history is started again: it gets the change, in the channels' order
  watching.clear()
  const arriving = { reset: async (channel: string) => { resets.push(channel); watching.add('entity') } }
  t.same(await watchedOf(interest, ['entity', 'feed'], arriving), ['entity'], 'watched meanwhile: sent')
  t.same(resets, ['entity', 'entity', 'feed'])
})
