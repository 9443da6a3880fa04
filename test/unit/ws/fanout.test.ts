/**
 * The fanout's resyncs of a gap announced on the cluster's gap channel: the whole database's watchers, or, for a
 * table truncated or made again, the watchers of some types (entities and feeds) — of some tenants and of every
 * tenant's entities, or of all — whatever instance announced it.
 */
import t from 'tap'
import { Fanout, type Receiver } from '../../../lib/ws/fanout.js'
import { EntityRegistry } from '../../../lib/entities.js'
import { resolveOptions } from '../../../lib/options.js'
import { fakeClock, recordingLogger } from '../fixtures/fakes.js'

class Watcher implements Receiver {
  readonly frames: string[] = []
  deliver (frame: string): boolean {
    this.frames.push(frame)
    return true
  }
}

t.test('a gap of some types (and tenants) reaches their watchers, feeds included, and nobody else', async (t) => {
  const clock = fakeClock(t)
  const registry = new EntityRegistry(resolveOptions({
    databases: [{ name: 'main', url: 'postgres://localhost/main' }],
    entities: { Squad: { access: 'public', tenanted: true, feed: true }, Team: { access: 'public' } },
    capture: { events: { enabled: true, types: { match: 'Match' } } }
  }))
  const fanout = new Fanout('cf', registry, recordingLogger().log)
  t.teardown(() => fanout.close())
  const watched: Record<string, Watcher> = {}
  const watch = (name: string, type: string, id: string, tenant: string | null): void => {
    watched[name] = new Watcher()
    fanout.store.add(fanout.channel(type, id, tenant), type, id, tenant, watched[name])
  }
  watch('red', 'Squad', 's-1', 'Red')
  watch('blue', 'Squad', 's-1', 'Blue')
  watch('every tenant', 'Squad', 's-1', null)
  watch('feed', 'Squad', '*', null)
  watch('team', 'Team', 't-1', null)
  fanout.onBusMessage(fanout.gapChannel, JSON.stringify({ database: 'main', reason: 'truncated', types: ['Squad'], tenants: ['Red'] }))
  clock.advance(100)
  const reasons = Object.fromEntries(Object.entries(watched).map(([name, w]) => [name, w.frames.map((f) => JSON.parse(f).data)]))
  t.same(reasons.red, [{ reason: 'truncated', entityType: 'Squad', entityId: 's-1', tenantId: 'Red' }])
  t.same(reasons['every tenant'], [{ reason: 'truncated', entityType: 'Squad', entityId: 's-1' }])
  t.same(reasons.feed, [{ reason: 'truncated', entityType: 'Squad', entityId: '*' }])
  t.same(reasons.blue, [], 'another tenant\'s')
  t.same(reasons.team, [], 'another type\'s')

  fanout.onBusMessage(fanout.gapChannel, JSON.stringify({ database: 'main', reason: 'rebuilt', types: ['Team'], tenants: null }))
  fanout.onBusMessage(fanout.gapChannel, JSON.stringify({ database: 'other', reason: 'rebuilt', types: ['Squad'], tenants: null }))
  clock.advance(100)
  t.same(watched.team.frames.map((f) => JSON.parse(f).data.reason), ['rebuilt'], 'every tenant\'s (null)')
  t.equal(watched.blue.frames.length, 0, 'a type of another database: nobody here')
})
