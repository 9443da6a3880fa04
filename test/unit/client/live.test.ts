/**
 * The SDK's live queries against a scripted server (test/helpers/scripted-server.ts) speaking the frames of
 * lib/protocol/messages.ts: a subscription that starts from a snapshot, many entities in one request (and one
 * release), a filtered feed's Map of matches, what a reconnect sends again, a `delta` type's base taken from a
 * snapshot, and a request the server could not read (`bad_request`).
 */
import t from 'tap'
import WebSocket from 'ws'
import { ChangefeedClient, type EntityState, type LiveQueryState, type Notification, type WireErrorCode } from '../../../lib/client/index.js'
import { subscriptionIdOf } from '../../../lib/protocol/wire.js'
import { filterIdOf } from '../../../lib/protocol/where.js'
import { ScriptedServer, type ScriptedSocket } from '../../helpers/scripted-server.js'
import { until } from '../../helpers/wait.js'
import type { TestContext } from '../fixtures/fakes.js'

type Player = { name: string, teamId: string, position: string }
type Entities = { Player: Player, RugbyGameState: { homeScore: number, awayScore: number }, Team: { name: string } }

const timestamp = new Date(0).toISOString()
const notification = (entityType: string, entityId: string, data: Record<string, unknown>): unknown =>
  ({ type: 'notification', data: { entityType, entityId, changeType: 'updated', payloadType: 'full', timestamp, ...data } })

async function connected (t: TestContext): Promise<{ server: ScriptedServer, client: ChangefeedClient<Entities>, socket: ScriptedSocket }> {
  const server = await ScriptedServer.start(t)
  const client = new ChangefeedClient<Entities>({ url: server.url, WebSocket: WebSocket as never, random: () => 0, backoff: { initialMs: 10 } })
  t.teardown(() => client.destroy())
  const socket = await server.socket()
  t.ok(await until(() => client.state === 'open'))
  return { server, client, socket }
}

t.test('a subscription with a snapshot starts from the entity\'s state; a late holder gets the state held', async (t) => {
  const { client, socket } = await connected(t)
  const states: Array<EntityState<Entities['RugbyGameState']>> = []
  const got: Notification[] = []
  const store = client.subscribe('RugbyGameState', 'match-1', { onSnapshot: (s) => states.push(s), onNotification: (n) => got.push(n) })
  t.same(await socket.next(), { type: 'subscribe', id: 'RugbyGameState:match-1', data: { entityType: 'RugbyGameState', entityId: 'match-1', snapshot: true } })
  socket.send({
    type: 'subscribed',
    id: 'RugbyGameState:match-1',
    data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 3, awayScore: 0 }, version: '4', position: 'n:10' } }
  })
  t.ok(await until(() => states.length === 1))
  t.same(states[0], { entityType: 'RugbyGameState', entityId: 'match-1', payload: { homeScore: 3, awayScore: 0 }, version: '4', position: 'n:10' })
  t.match(store.getSnapshot(), { status: 'subscribed', payload: { homeScore: 3, awayScore: 0 }, version: '4' }, 'the store holds the document from the start')

  socket.send(notification('RugbyGameState', 'match-1', { payload: { homeScore: 3, awayScore: 5 }, version: '5', position: 'n:11' }))
  t.ok(await until(() => got.length === 1))
  t.match(store.getSnapshot(), { payload: { homeScore: 3, awayScore: 5 }, version: '5' })

  const late: EntityState[] = []
  client.subscribe('RugbyGameState', 'match-1', { onSnapshot: (s) => late.push(s) })
  t.ok(await until(() => late.length === 1), 'a late holder starts from what the subscription holds')
  t.match(late[0], { payload: { homeScore: 3, awayScore: 5 }, version: '5', position: 'n:11' })
  t.equal(socket.received.length, 1, 'and asks nothing of the server')

  // minimal types: a version and a position, no document
  const minimal: EntityState[] = []
  client.subscribe('Team', 'team-1', { onSnapshot: (s) => minimal.push(s) })
  const frame = await socket.next()
  t.match(frame, { data: { snapshot: true } })
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'Team:team-1', entityType: 'Team', entityId: 'team-1', snapshot: { version: '2', position: 'n:3' } } })
  t.ok(await until(() => minimal.length === 1))
  t.notOk('payload' in minimal[0], 'no payload on a minimal type')
  t.equal(client.peek('Team', 'team-1').payload, undefined)
})

t.test('many entities: one request; the reply maps to each entity, refused ones included; one unsubscribe', async (t) => {
  const { client, socket } = await connected(t)
  client.subscribe('Player', 'p2')
  await socket.next()
  const states: EntityState[] = []
  const errors: Array<[WireErrorCode, string]> = []
  const got: string[] = []
  const release = client.subscribeMany('Player', ['p1', 'p2', 'p9', 'p1'], {
    onSnapshot: (s) => states.push(s),
    onError: (code, _message, entityId) => errors.push([code, entityId]),
    onNotification: (n) => got.push(n.entityId)
  })
  const request = await socket.next()
  t.same(request.data, { entityType: 'Player', entityIds: ['p1', 'p2', 'p9'], snapshot: true }, 'one request, each id once (p2, watched already without a snapshot, asks again for one)')
  socket.send({
    type: 'subscribed',
    id: request.id,
    data: {
      entityType: 'Player',
      subscribed: ['p1', 'p2'],
      errors: [{ entityId: 'p9', code: 'forbidden', error: 'not yours' }],
      snapshots: { p1: { payload: { name: 'A', teamId: 't1', position: 'wing' }, version: '1', position: 'n:1' }, p2: { payload: null, version: null } }
    }
  })
  t.ok(await until(() => states.length === 2 && errors.length === 1))
  t.same(states, [
    { entityType: 'Player', entityId: 'p1', payload: { name: 'A', teamId: 't1', position: 'wing' }, version: '1', position: 'n:1' },
    { entityType: 'Player', entityId: 'p2', payload: null, version: null }
  ], 'each subscribed entity\'s snapshot, null when there is no document')
  t.same(errors, [['forbidden', 'p9']])
  t.match(client.peek('Player', 'p9'), { status: 'error', error: { code: 'forbidden' } })
  t.match(client.peek('Player', 'p1'), { status: 'subscribed', payload: { name: 'A' } })

  socket.send(notification('Player', 'p1', { payload: { name: 'A2', teamId: 't1', position: 'wing' }, position: 'n:2' }))
  t.ok(await until(() => got.length === 1), 'an entity of the batch gets its notifications')

  release()
  const unsubscribe = await socket.next()
  t.same(unsubscribe, { type: 'unsubscribe', data: { entityType: 'Player', entityIds: ['p1', 'p9'] } }, 'one unsubscribe for the released ones (p2 is still held)')

  const many = Array.from({ length: 1500 }, (_, i) => `q${i}`)
  const stop = client.subscribeMany('Player', many)
  const [first, second] = [await socket.next(), await socket.next()]
  t.same([(first.data?.entityIds as string[]).length, (second.data?.entityIds as string[]).length], [1000, 500], 'split at 1000 ids')
  t.notOk(first.data !== undefined && 'snapshot' in first.data, 'no snapshot asked for')
  stop()
  t.same([((await socket.next()).data?.entityIds as string[]).length, ((await socket.next()).data?.entityIds as string[]).length], [1000, 500])
})

t.test('a live query keeps the matching entities: snapshot, then entered, updated, left, deleted', async (t) => {
  const { client, socket } = await connected(t)
  const where = { teamId: 'team-1', position: ['wing', 'centre'] }
  const query = client.subscribeWhere('Player', where)
  const subscriptionId = subscriptionIdOf('Player', filterIdOf(where))
  t.equal(query.subscriptionId, 'Player:*{"position":["centre","wing"],"teamId":"team-1"}')
  t.equal(query.status, 'pending')
  const request = await socket.next()
  t.same(request, { type: 'subscribe', id: subscriptionId, data: { entityType: 'Player', entityId: '*', where, snapshot: true } })
  const other = client.subscribeWhere('Player', { position: ['centre', 'wing', 'wing'], teamId: 'team-1' })
  t.equal(other.subscriptionId, subscriptionId, 'the same filter spelled otherwise shares it')

  const states: Array<LiveQueryState<Player>> = []
  query.onChange((s) => states.push(s))
  socket.send(notification('Player', 'p0', { subscriptionId, changeType: 'entered', payload: { name: 'early' } }))
  socket.send({
    type: 'subscribed',
    id: subscriptionId,
    data: {
      subscriptionId,
      entityType: 'Player',
      entityId: '*',
      where: { position: ['centre', 'wing'], teamId: 'team-1' },
      snapshot: { entities: [{ entityId: 'p1', payload: { name: 'A', teamId: 'team-1', position: 'wing' }, version: '1', position: 'n:1' }, { entityId: 'p2', payload: { name: 'B', teamId: 'team-1', position: 'centre' }, version: '3', position: 'n:2' }] }
    }
  })
  t.ok(await until(() => query.status === 'ready'))
  t.same([...query.entities.keys()], ['p1', 'p2'], 'seeded from the snapshot; what came before the reply is in it')
  const seeded = query.entities

  const player = (name: string, position = 'wing'): Player => ({ name, teamId: 'team-1', position })
  socket.send(notification('Player', 'p3', { subscriptionId, changeType: 'entered', payload: player('C') }))
  socket.send(notification('Player', 'p1', { subscriptionId, changeType: 'updated', payload: player('A2') }))
  socket.send(notification('Player', 'p2', { subscriptionId, changeType: 'left', payload: { ...player('B'), teamId: 'team-2' } }))
  socket.send(notification('Player', 'p3', { subscriptionId, changeType: 'deleted', payload: null }))
  socket.send(notification('Player', 'p4', { subscriptionId, changeType: 'created', payload: player('D', 'centre') }))
  socket.send(notification('Player', 'p5', { subscriptionId: 'Player:*{"teamId":"team-9"}', changeType: 'entered', payload: player('X') }))
  socket.send(notification('Player', 'p6', { changeType: 'updated', payload: player('Y') }))
  t.ok(await until(() => query.entities.has('p4')))
  t.same(Object.fromEntries(query.entities), { p1: player('A2'), p4: player('D', 'centre') }, 'entered and updated put in, left and deleted take out; another filter\'s and an entity\'s frames do not reach it')
  t.same([...seeded.keys()], ['p1', 'p2'], 'a new Map on each change: the one read before is left as it was')
  t.equal(states.at(-1), query.getSnapshot(), 'listeners get each new state')
  t.equal(other.entities, query.entities, 'handles of one filter share the matches')

  query.close()
  query.close()
  other.close()
  t.same(await socket.next(), { type: 'unsubscribe', data: { subscriptionId } }, 'the last handle unsubscribes by subscriptionId')

  const refused = client.subscribeWhere('Player', { teamId: 'team-2' })
  const frame = await socket.next()
  socket.send({ type: 'subscription_error', id: frame.id, data: { entityType: 'Player', entityId: '*', code: 'too_many_filters', error: 'too many' } })
  t.ok(await until(() => refused.status === 'error'))
  t.same(refused.getSnapshot().error, { code: 'too_many_filters', message: 'too many' })
})

t.test('after a reconnect: a subscription holding a document resumes with since and a snapshot, the rest in one request, live queries afresh', async (t) => {
  const { server, client, socket } = await connected(t)
  const withSnapshot: EntityState[] = []
  const resyncs: string[] = []
  client.subscribe('RugbyGameState', 'match-1', { onSnapshot: (s) => withSnapshot.push(s), onResync: (r) => resyncs.push(`snapshot-holder:${r}`) })
  client.subscribe('RugbyGameState', 'match-1', { onResync: (r) => resyncs.push(`plain:${r}`) })
  const everyResync: string[] = []
  client.onResync((type, id, reason) => everyResync.push(`${type}:${id}:${reason}`))
  let frame = await socket.next()
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 0, awayScore: 0 }, version: '1', position: '0a0a0a0a:5' } } })
  client.subscribe('Team', 'team-1')
  client.subscribe('Team', 'team-2')
  frame = await socket.next()
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'Team:team-1', entityType: 'Team', entityId: 'team-1' } })
  frame = await socket.next()
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'Team:team-2', entityType: 'Team', entityId: 'team-2' } })
  const query = client.subscribeWhere('Player', { teamId: 'team-1' })
  frame = await socket.next()
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: query.subscriptionId, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p1', payload: { name: 'A' } }] } } })
  t.ok(await until(() => query.status === 'ready' && withSnapshot.length === 1))

  socket.close(1001)
  const again = await server.socket(1)
  const sent = [await again.next(), await again.next(), await again.next()]
  t.same(sent.map((f) => f.data), [
    { entityType: 'RugbyGameState', entityId: 'match-1', since: '0a0a0a0a:5', snapshot: true },
    { entityType: 'Team', entityIds: ['team-1', 'team-2'] },
    { entityType: 'Player', entityId: '*', where: { teamId: 'team-1' }, snapshot: true }
  ], 'with since and a snapshot; the others of one type in one request; the live query with a snapshot')

  again.send({ type: 'subscribed', id: sent[0].id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', recovered: false, snapshot: { payload: { homeScore: 7, awayScore: 0 }, version: '3', position: '0a0a0a0a:9' } } })
  again.send({ type: 'subscribed', id: sent[1].id, data: { entityType: 'Team', subscribed: ['team-1', 'team-2'], errors: [] } })
  again.send({ type: 'subscribed', id: sent[2].id, data: { subscriptionId: query.subscriptionId, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p2', payload: { name: 'B' } }] } } })
  t.ok(await until(() => withSnapshot.length === 2 && query.entities.has('p2')))
  t.match(withSnapshot[1], { payload: { homeScore: 7, awayScore: 0 }, position: '0a0a0a0a:9' }, 'not recovered: the fresh state')
  t.same([...query.entities.keys()], ['p2'], 'the live query\'s matches replaced by the new snapshot')
  t.ok(await until(() => everyResync.length === 2))
  t.same(resyncs, ['plain:reconnected'], 'a fresh state stands in for a refetch for the holder that takes snapshots; the other refetches')
  t.same(everyResync.sort(), ['Team:team-1:reconnected', 'Team:team-2:reconnected'], 'every-resync listeners hear of those with no fresh state')
})

t.test('delta types: the snapshot is the base of the next patch; a patch on another base asks again with a snapshot', async (t) => {
  const { client, socket } = await connected(t)
  const states: EntityState[] = []
  const resyncs: string[] = []
  const got: Notification[] = []
  const store = client.subscribe('RugbyGameState', 'match-1', { onSnapshot: (s) => states.push(s), onResync: (r) => resyncs.push(r), onNotification: (n) => got.push(n) })
  let frame = await socket.next()
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 0, awayScore: 0 }, version: '1', position: 'n:5' } } })
  const delta = (position: string, basePosition: string, homeScore: number): unknown =>
    notification('RugbyGameState', 'match-1', { payloadType: 'delta', position, basePosition, patch: [{ op: 'replace', path: '/homeScore', value: homeScore }] })
  socket.send(delta('n:6', 'n:5', 3))
  t.ok(await until(() => got.length === 1))
  t.same(got[0].payload, { homeScore: 3, awayScore: 0 }, 'the patch applied to the snapshot\'s document')

  socket.send(delta('n:9', 'n:8', 10))
  frame = await socket.next()
  t.same(frame.data, { entityType: 'RugbyGameState', entityId: 'match-1', since: 'n:6', snapshot: true }, 'asked again: since the last whole document, with a snapshot')
  t.same(store.getSnapshot().payload, { homeScore: 3, awayScore: 0 }, 'no document made of a patch on another base')
  socket.send({ type: 'subscribed', id: frame.id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', recovered: false, snapshot: { payload: { homeScore: 10, awayScore: 0 }, version: '4', position: 'n:9' } } })
  t.ok(await until(() => states.length === 2))
  t.same(store.getSnapshot().payload, { homeScore: 10, awayScore: 0 })
  socket.send(delta('n:10', 'n:9', 12))
  t.ok(await until(() => got.length === 2))
  t.same(got[1].payload, { homeScore: 12, awayScore: 0 }, 'the new snapshot is the next base')
  t.same(resyncs, [], 'the holder took the fresh state: no refetch')
})

t.test('a request the server could not read (bad_request): each entity\'s error, a live query\'s too; nothing asked again', async (t) => {
  const { client, socket } = await connected(t)
  const errors: string[] = []
  client.subscribeMany('Team', ['a', 'b'], { onError: (code, _message, entityId) => errors.push(`${entityId}: ${code}`), onSnapshot: () => {} })
  const batch = await socket.next()
  socket.send({ type: 'error', id: batch.id, data: { code: 'bad_request', error: 'malformed' } })
  t.ok(await until(() => errors.length === 2))
  t.same(errors.sort(), ['a: bad_request', 'b: bad_request'])
  t.equal(client.peek('Team', 'a').status, 'error')
  socket.send({ type: 'error', id: '#404', data: { code: 'bad_request', error: 'no such request' } })
  const query = client.subscribeWhere('Team', { name: 'Sharks' })
  const frame = await socket.next()
  t.equal(frame.id, query.subscriptionId, 'nothing was asked again before the live query')
  socket.send({ type: 'error', id: frame.id, data: { code: 'bad_request', error: 'malformed' } })
  t.ok(await until(() => query.status === 'error'))
  t.equal(query.getSnapshot().error?.code, 'bad_request')
})

t.test('rate limited: a request for many is sent again, each entity later; the live query too', async (t) => {
  const { client, socket } = await connected(t)
  client.subscribeMany('Team', ['a', 'b'])
  const batch = await socket.next()
  socket.send({ type: 'error', id: batch.id, data: { code: 'rate_limited', error: 'slow down' } })
  const again = [await socket.next(), await socket.next()]
  t.same(again.map((f) => f.id).sort(), ['Team:a', 'Team:b'], 'each asked for again after a short delay')
  const query = client.subscribeWhere('Team', { name: 'Sharks' })
  const frame = await socket.next()
  socket.send({ type: 'error', id: frame.id, data: { code: 'rate_limited', error: 'slow down' } })
  t.same((await socket.next()).id, query.subscriptionId, 'the live query is asked for again')
})
