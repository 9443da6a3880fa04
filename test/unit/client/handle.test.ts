/**
 * The handles the client gives out, with a fake of its WebSocket on a fake clock: subscribe() and subscribeWhere()
 * hand out one shape (the state now, each change, the subscriptionId, close), which is also the function that
 * closes it; the last handle of a subscription unsubscribes a tick later; peek() reads a state without holding it.
 */
import t from 'tap'
import { ChangefeedClient, type EntitySnapshot } from '../../../lib/client/index.js'
import { fakeClock, turn, type TestContext } from '../fixtures/fakes.js'
import { fakeSockets, type FakeSocket } from '../fixtures/sockets.js'

type Entities = { Match: { home: number }, Player: { name: string, teamId: string } }
const timestamp = new Date(0).toISOString()

async function connected (t: TestContext): Promise<{ client: ChangefeedClient<Entities>, socket: FakeSocket, clock: ReturnType<typeof fakeClock> }> {
  const clock = fakeClock(t)
  const { WebSocket, sockets } = fakeSockets()
  const client = new ChangefeedClient<Entities>({ url: 'ws://fake', WebSocket })
  t.teardown(() => client.destroy())
  await turn()
  sockets[0].open()
  return { client, socket: sockets[0], clock }
}

const subscribed = (socket: FakeSocket, entityType: string, entityId: string): void =>
  socket.receive({ type: 'subscribed', id: `${entityType}:${entityId}`, data: { subscriptionId: `${entityType}:${entityId}`, entityType, entityId } })
const changed = (entityId: string, payload: unknown, position: string): unknown =>
  ({ type: 'notification', data: { entityType: 'Match', entityId, changeType: 'updated', payloadType: 'full', timestamp, payload, position } })
const sentOf = (socket: FakeSocket, type: string): FakeSocket['sent'] => socket.sent.filter((frame) => frame.type === type)
/** The tick of a last release, then the batcher's, in which the unsubscribes of one tick go out together. */
const ticks = (clock: ReturnType<typeof fakeClock>): void => { clock.advance(1); clock.advance(1) }

t.test('subscribe() hands out a handle: the subscriptionId, the state now, each change', async (t) => {
  const { client, socket } = await connected(t)
  const byEvents: Array<[string, number]> = []
  const match = client.subscribe('Match', 'm1', { onChange: (state, entityId) => byEvents.push([entityId, state.revision]) })
  t.same([match.subscriptionId, match.status, match.payload], ['Match:m1', 'pending', undefined])
  t.equal(match.getSnapshot(), client.peek('Match', 'm1'), 'the state the client holds')
  const changes: Array<EntitySnapshot<Entities['Match']>> = []
  const stop = match.onChange((state) => changes.push(state))

  subscribed(socket, 'Match', 'm1')
  socket.receive(changed('m1', { home: 3 }, 'n:1'))
  t.same([match.status, match.payload], ['subscribed', { home: 3 }])
  t.same(changes.map((s) => [s.status, s.payload]), [['subscribed', undefined], ['subscribed', { home: 3 }]], 'each change')
  t.equal(changes.at(-1), match.getSnapshot(), 'as getSnapshot() reads it, the same object until it changes')
  t.same(byEvents, changes.map((s) => ['m1', s.revision]), 'onChange among the events too, with the entity id')

  stop()
  socket.receive(changed('m1', { home: 5 }, 'n:2'))
  t.equal(changes.length, 2, 'a stopped listener hears no more')
  t.same(match.payload, { home: 5 })
})

t.test('a handle is the function that closes it; the last one of an entity unsubscribes on the next tick', async (t) => {
  const { client, socket, clock } = await connected(t)
  const first = client.subscribe('Match', 'm1')
  const second = client.subscribe('Match', 'm1')
  t.equal(sentOf(socket, 'subscribe').length, 1, 'two handles, one server subscription')
  const heard: string[] = []
  first.onChange(() => heard.push('first'))
  second.onChange(() => heard.push('second'))
  first()
  first.close()
  ticks(clock)
  t.same(sentOf(socket, 'unsubscribe'), [], 'called as a function, then closed again: the other handle still holds it')
  subscribed(socket, 'Match', 'm1')
  t.same([heard, second.status], [['second'], 'subscribed'], 'a closed handle\'s listeners hear no more')

  second.close()
  t.same(sentOf(socket, 'unsubscribe'), [], 'not at once')
  ticks(clock)
  t.same(sentOf(socket, 'unsubscribe'), [{ type: 'unsubscribe', data: { subscriptionId: 'Match:m1' } }])
  t.equal(client.peek('Match', 'm1').status, 'pending', 'held by nothing: peek() reads pending')
})

t.test('the options of subscribe(): watcher counts and the entity\'s state, as the React hooks ask for them', async (t) => {
  const { client, socket } = await connected(t)
  client.subscribe('Match', 'm1', {}, { counted: true, snapshot: true })
  t.match(sentOf(socket, 'subscribe').at(-1), { id: 'Match:m1', data: { entityId: 'm1', watchers: true, snapshot: true } })
  socket.receive({ type: 'watchers', data: { entityType: 'Match', entityId: 'm1', count: 4 } })
  t.equal(client.peek('Match', 'm1').watchers, 4)
})

t.test('subscribeMany(): onChange names each entity', async (t) => {
  const { client, socket } = await connected(t)
  const heard: string[] = []
  const release = client.subscribeMany('Match', ['m1', 'm2'], { onChange: (_state, entityId) => heard.push(entityId) })
  const [request] = sentOf(socket, 'subscribe')
  t.match(request, { data: { entityIds: ['m1', 'm2'] } })
  socket.receive({ type: 'subscribed', id: request.id, data: { entityType: 'Match', subscribed: ['m1', 'm2'], errors: [] } })
  t.same(heard, ['m1', 'm2'])
  release()
})

t.test('subscribeMany(): the position the reply gives each is its since after a reconnect', async (t) => {
  const clock = fakeClock(t)
  const { WebSocket, sockets } = fakeSockets()
  const client = new ChangefeedClient<Entities>({ url: 'ws://fake', WebSocket, random: () => 0.5, backoff: { initialMs: 100 } })
  t.teardown(() => client.destroy())
  await turn()
  sockets[0].open()
  client.subscribeMany('Match', ['m1', 'm2'])
  const [request] = sentOf(sockets[0], 'subscribe')
  sockets[0].receive({ type: 'subscribed', id: request.id, data: { entityType: 'Match', subscribed: ['m1', 'm2'], errors: [], positions: { m1: '0a0a0a0a:3' } } })
  sockets[0].close(1006)
  clock.advance(1000)
  await turn()
  sockets[1].open()
  const again = sentOf(sockets[1], 'subscribe')
  t.match(again.find((f) => f.id === 'Match:m1'), { data: { entityId: 'm1', since: '0a0a0a0a:3' } }, 'm1 resumes from its position')
  const m2 = again.find((f) => f.id === 'Match:m2')
  t.ok(m2?.data !== undefined && !('since' in m2.data), 'm2, with none, is asked for afresh')
})

t.test('subscribeWhere() hands out the same shape', async (t) => {
  const { client, socket, clock } = await connected(t)
  const where = { teamId: 't1' }
  const query = client.subscribeWhere('Player', where)
  const [request] = sentOf(socket, 'subscribe')
  t.same([query.subscriptionId, query.status, query.entities.size], [request.id, 'pending', 0])
  const sizes: number[] = []
  query.onChange((state) => sizes.push(state.entities.size))
  socket.receive({ type: 'subscribed', id: request.id, data: { subscriptionId: request.id, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p1', payload: { name: 'Ann', teamId: 't1' } }] } } })
  t.same([query.status, [...query.entities.keys()], sizes], ['ready', ['p1'], [1]])
  t.equal(client.peekWhere('Player', { teamId: 't1' }), query.getSnapshot(), 'peekWhere() reads the state of the same conditions')
  query()
  ticks(clock)
  t.same(sentOf(socket, 'unsubscribe'), [{ type: 'unsubscribe', data: { subscriptionId: request.id } }], 'called as a function: closed')
  t.equal(client.peekWhere('Player', where).status, 'pending')
})
