/**
 * The React hooks of live queries in a DOM (jsdom) with React Testing Library, against a scripted server
 * (test/helpers/scripted-server.ts): useEntity renders the snapshot before any change, useEntities asks for many
 * in one request, useLiveQuery renders the matches as they enter and leave; and the TanStack Query adapter seeds
 * the cache from snapshots.
 */
import t from 'tap'
import { JSDOM } from 'jsdom'
import WebSocket from 'ws'
import { ScriptedServer } from '../../helpers/scripted-server.js'
import { sleep, until } from '../../helpers/wait.js'

const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/' })
Object.assign(globalThis, { window: dom.window, document: dom.window.document, navigator: dom.window.navigator, IS_REACT_ACT_ENVIRONMENT: true })
const { StrictMode, createElement: h } = await import('react')
const { render, act, cleanup } = await import('@testing-library/react')
const { ChangefeedClient } = await import('../../../lib/client/index.js')
const { ChangefeedProvider, useEntity, useEntities, useLiveQuery } = await import('../../../lib/client/react.js')
const { syncQueryClient } = await import('../../../lib/client/tanstack.js')
const { QueryClient } = await import('@tanstack/query-core')

type Entities = { RugbyGameState: { homeScore: number, awayScore: number }, Player: { name: string, teamId: string } }

const waitFor = async (check: () => boolean, ms = 5000): Promise<boolean> => await until(check, ms, async () => { await act(async () => { await sleep(10) }) })
const timestamp = new Date(0).toISOString()

t.test('useEntity renders the snapshot; useEntities asks for many in one request; useLiveQuery follows the matches', async (t) => {
  const server = await ScriptedServer.start(t)
  const client = new ChangefeedClient<Entities>({ url: server.url, WebSocket: WebSocket as never })
  t.teardown(() => { cleanup(); client.destroy() })
  function Match (): ReturnType<typeof h> {
    const state = useEntity<Entities, 'RugbyGameState'>('RugbyGameState', 'match-1')
    const players = useEntities<Entities, 'Player'>('Player', ['p1', 'p2'])
    const wings = useLiveQuery<Entities, 'Player'>('Player', { teamId: 'team-1' })
    const names = [...players.values()].map((s) => s.payload?.name ?? '?').join(',')
    const matching = [...wings.entities.values()].map((p) => p.name).join(',')
    return h('p', { 'data-testid': 'match' }, `${state === undefined || state === null ? '–' : `${state.homeScore}-${state.awayScore}`} ${names} ${wings.status}:${matching}`)
  }
  const view = render(h(StrictMode, null, h(ChangefeedProvider, { client }, h(Match))))
  const text = (): string | null => view.getByTestId('match').textContent
  const socket = await server.socket()
  const frames = [await socket.next(), await socket.next(), await socket.next()]
  t.match(frames.map((f) => f.data), [
    { entityType: 'RugbyGameState', entityId: 'match-1', snapshot: true },
    { entityType: 'Player', entityIds: ['p1', 'p2'], snapshot: true },
    { entityType: 'Player', entityId: '*', where: { teamId: 'team-1' }, snapshot: true }
  ], 'StrictMode\'s double mount sends each once; the players in one request')
  t.equal(text(), '– ?,? pending:')

  socket.send({ type: 'subscribed', id: frames[0].id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 3, awayScore: 0 }, version: '1', position: 'n:1' } } })
  socket.send({ type: 'subscribed', id: frames[1].id, data: { entityType: 'Player', subscribed: ['p1', 'p2'], errors: [], snapshots: { p1: { payload: { name: 'Ann', teamId: 'team-1' } }, p2: { payload: { name: 'Bo', teamId: 'team-2' } } } } })
  socket.send({ type: 'subscribed', id: frames[2].id, data: { subscriptionId: frames[2].id, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p1', payload: { name: 'Ann', teamId: 'team-1' } }] } } })
  t.ok(await waitFor(() => text() === '3-0 Ann,Bo ready:Ann'), 'every state from its snapshot, no change needed')

  const change = (entityId: string, changeType: string, payload: unknown, subscriptionId?: string): void =>
    socket.send({ type: 'notification', data: { entityType: 'Player', entityId, changeType, payloadType: 'full', timestamp, payload, ...(subscriptionId === undefined ? {} : { subscriptionId }) } })
  change('p2', 'updated', { name: 'Bo', teamId: 'team-1' })
  change('p2', 'entered', { name: 'Bo', teamId: 'team-1' }, frames[2].id)
  t.ok(await waitFor(() => text() === '3-0 Ann,Bo ready:Ann,Bo'), 'an entity entered')
  change('p1', 'left', { name: 'Ann', teamId: 'team-3' }, frames[2].id)
  t.ok(await waitFor(() => text() === '3-0 Ann,Bo ready:Bo'), 'an entity left')

  view.unmount()
  const released = [await socket.next(), await socket.next(), await socket.next()]
  t.same(released.map((f) => f.data).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))), [
    { entityType: 'Player', entityIds: ['p1', 'p2'] },
    { subscriptionId: 'Player:*{"teamId":"team-1"}' },
    { subscriptionId: 'RugbyGameState:match-1' }
  ], 'unmounting unsubscribes, the players in one request')
})

t.test('a component that mounts on states the client holds already renders them in its first render', async (t) => {
  const server = await ScriptedServer.start(t)
  const client = new ChangefeedClient<Entities>({ url: server.url, WebSocket: WebSocket as never })
  t.teardown(() => { cleanup(); client.destroy() })
  const match = client.subscribe('RugbyGameState', 'match-1', {}, { snapshot: true })
  const query = client.subscribeWhere('Player', { teamId: 'team-1' })
  const socket = await server.socket()
  const [entity, filter] = [await socket.next(), await socket.next()]
  socket.send({ type: 'subscribed', id: entity.id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 1, awayScore: 2 } } } })
  socket.send({ type: 'subscribed', id: filter.id, data: { subscriptionId: query.subscriptionId, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p1', payload: { name: 'Ann', teamId: 'team-1' } }] } } })
  t.ok(await until(() => match.status === 'subscribed' && query.status === 'ready'))
  const renders: string[] = []
  function Late (): ReturnType<typeof h> {
    const state = useEntity<Entities, 'RugbyGameState'>('RugbyGameState', 'match-1')
    const players = useLiveQuery<Entities, 'Player'>('Player', { teamId: 'team-1' })
    renders.push(`${state?.homeScore ?? '–'} ${players.status}:${[...players.entities.keys()].join(',')}`)
    return h('p', null, renders.at(-1))
  }
  render(h(ChangefeedProvider, { client }, h(Late)))
  t.equal(renders[0], '1 ready:p1', 'no render without them first')
})

t.test('TanStack Query: snapshots seed the cache, a live query\'s entities too; an entity that left is not gone', async (t) => {
  const server = await ScriptedServer.start(t)
  const client = new ChangefeedClient<Entities>({ url: server.url, WebSocket: WebSocket as never })
  const queryClient = new QueryClient()
  const stop = syncQueryClient(client, queryClient)
  t.teardown(() => { stop(); client.destroy(); queryClient.clear() })
  client.subscribe('RugbyGameState', 'match-1', {}, { snapshot: true })
  const query = client.subscribeWhere('Player', { teamId: 'team-1' })
  const socket = await server.socket()
  const [entity, filter] = [await socket.next(), await socket.next()]
  socket.send({ type: 'subscribed', id: entity.id, data: { subscriptionId: 'RugbyGameState:match-1', entityType: 'RugbyGameState', entityId: 'match-1', snapshot: { payload: { homeScore: 1, awayScore: 2 } } } })
  socket.send({ type: 'subscribed', id: filter.id, data: { subscriptionId: query.subscriptionId, entityType: 'Player', entityId: '*', snapshot: { entities: [{ entityId: 'p1', payload: { name: 'Ann', teamId: 'team-1' } }] } } })
  t.ok(await until(() => queryClient.getQueryData(['Player', 'p1']) !== undefined))
  t.same(queryClient.getQueryData(['RugbyGameState', 'match-1']), { homeScore: 1, awayScore: 2 }, 'an entity\'s snapshot')
  t.same(queryClient.getQueryData(['Player', 'p1']), { name: 'Ann', teamId: 'team-1' }, 'a live query\'s entities')
  socket.send({ type: 'notification', data: { entityType: 'Player', entityId: 'p1', changeType: 'left', payloadType: 'full', timestamp, subscriptionId: query.subscriptionId, payload: { name: 'Ann', teamId: 'team-2' } } })
  socket.send({ type: 'notification', data: { entityType: 'Player', entityId: 'p2', changeType: 'entered', payloadType: 'full', timestamp, subscriptionId: query.subscriptionId, payload: { name: 'Bo', teamId: 'team-1' } } })
  t.ok(await until(() => queryClient.getQueryData(['Player', 'p2']) !== undefined))
  t.same(queryClient.getQueryData(['Player', 'p1']), { name: 'Ann', teamId: 'team-2' }, 'left: the entity\'s document as it is now')
  socket.send({ type: 'notification', data: { entityType: 'Player', entityId: 'p2', changeType: 'left', payloadType: 'full', timestamp: new Date(1).toISOString(), subscriptionId: query.subscriptionId } })
  socket.send({ type: 'notification', data: { entityType: 'Player', entityId: 'p3', changeType: 'entered', payloadType: 'full', timestamp, subscriptionId: query.subscriptionId, payload: { name: 'Cy', teamId: 'team-1' } } })
  t.ok(await until(() => queryClient.getQueryData(['Player', 'p3']) !== undefined))
  t.same(queryClient.getQueryData(['Player', 'p2']), { name: 'Bo', teamId: 'team-1' }, 'left without a document: the entity is not gone, the cache is left alone')
})
