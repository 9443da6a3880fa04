/**
 * The React bindings in a DOM (jsdom) with React Testing Library, against the real server: StrictMode mounts
 * subscribe once, renders stay bounded, full payloads render without a fetch, and the TanStack Query adapter.
 */
import t from 'tap'
import { JSDOM } from 'jsdom'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import type { ChangefeedClient as Client } from '../../../lib/client/index.js'
import { startApp } from '../../helpers/app.js'
import { sleep, until } from '../../helpers/wait.js'

const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/' })
Object.assign(globalThis, { window: dom.window, document: dom.window.document, navigator: dom.window.navigator, IS_REACT_ACT_ENVIRONMENT: true })
const { StrictMode, createElement: h } = await import('react')
const { render, act, cleanup } = await import('@testing-library/react')
const { ChangefeedClient } = await import('../../../lib/client/index.js')
const { ChangefeedProvider, useEntity, useConnectionState, useEntitySubscription } = await import('../../../lib/client/react.js')
const { syncQueryClient } = await import('../../../lib/client/tanstack.js')
const { QueryClient } = await import('@tanstack/query-core')

type Entities = { RugbyGameState: { homeScore: number, awayScore: number }, Team: { name: string } }

/** until(), with React's updates flushed between polls */
const waitFor = async (check: () => boolean, ms = 5000): Promise<boolean> => await until(check, ms, async () => { await act(async () => { await sleep(10) }) })

const entities = { RugbyGameState: { access: 'public' as const, payload: 'full' as const }, Team: { access: 'public' as const } }

t.test('StrictMode: one subscribe, bounded renders, full payloads rendered', async (t) => {
  const { app, url } = await startApp(t, { entities })
  const client = new ChangefeedClient<Entities>({ url, WebSocket: WebSocket as never })
  t.teardown(() => { cleanup(); client.destroy() })
  let renders = 0
  let refetches = 0
  function Score (): ReturnType<typeof h> {
    renders++
    const state = useEntity<Entities, 'RugbyGameState'>('RugbyGameState', 'match-1')
    const connection = useConnectionState()
    useEntitySubscription<Entities, 'Team'>('Team', 'team-1', () => { refetches++ })
    return h('p', { 'data-testid': 'score' }, `${connection}: ${state === undefined || state === null ? '–' : `${state.homeScore}-${state.awayScore}`}`)
  }
  const view = render(h(StrictMode, null, h(ChangefeedProvider, { client }, h(Score))))
  t.ok(await waitFor(() => view.getByTestId('score').textContent === 'open: –'), 'renders connected, no data yet')
  t.ok(await waitFor(() => app.changefeed.stats().subscriptions.active === 2))
  // a marker: the client sends on one socket, and the server handles a socket's requests in order, so once a
  // subscribe sent now has been handled, so has any unsubscribe the unmount sent
  const releaseMarker = client.subscribe('Team', 'marker')
  t.ok(await waitFor(() => app.changefeed.stats().subscriptions.created === 3))
  t.same([app.changefeed.stats().subscriptions.created, app.changefeed.stats().subscriptions.removed], [3, 0],
    'StrictMode mount/unmount/mount: one subscribe per entity (and the marker\'s), no unsubscribe')
  releaseMarker()
  t.ok(await waitFor(() => app.changefeed.stats().subscriptions.active === 2))

  const before = renders
  await act(async () => { await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload: { homeScore: 7, awayScore: 3 } }) })
  t.ok(await waitFor(() => view.getByTestId('score').textContent === 'open: 7-3'), 'the payload renders without a fetch')
  const perUpdate = renders - before
  t.ok(perUpdate >= 1 && perUpdate <= 2, `one render per notification (two in StrictMode's double render): ${perUpdate}`)

  await act(async () => { await app.changefeed.publish({ entityType: 'Team', entityId: 'team-1', changeType: 'updated' }) })
  t.ok(await waitFor(() => refetches === 1), 'a minimal notification calls the handler once (the refetch)')

  view.unmount()
  t.ok(await waitFor(() => app.changefeed.stats().subscriptions.active === 0), 'unmounting unsubscribes')
})

/** The server, a client, and a TanStack QueryClient kept in step with it. */
async function synced (t: { teardown(fn: () => unknown): void }): Promise<{ app: FastifyInstance, client: Client<Entities>, queryClient: InstanceType<typeof QueryClient> }> {
  const { app, url } = await startApp(t, { entities })
  const client = new ChangefeedClient<Entities>({ url, WebSocket: WebSocket as never })
  const queryClient = new QueryClient()
  const stop = syncQueryClient(client, queryClient)
  t.teardown(() => { stop(); client.destroy(); queryClient.clear() })
  return { app, client, queryClient }
}

t.test('TanStack Query: minimal invalidates, full sets data unless the cache is newer', async (t) => {
  const { app, client, queryClient } = await synced(t)
  client.subscribe('RugbyGameState', 'match-1')
  client.subscribe('Team', 'team-1')
  queryClient.setQueryData(['Team', 'team-1'], { name: 'Sharks' })
  await waitFor(() => app.changefeed.stats().subscriptions.active === 2)

  await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload: { homeScore: 1, awayScore: 0 } })
  t.ok(await waitFor(() => (queryClient.getQueryData(['RugbyGameState', 'match-1']) as { homeScore?: number } | undefined)?.homeScore === 1), 'full: data set')
  t.notOk(queryClient.getQueryState(['Team', 'team-1'])?.isInvalidated, 'not invalidated yet')
  await app.changefeed.publish({ entityType: 'Team', entityId: 'team-1', changeType: 'updated' })
  t.ok(await waitFor(() => queryClient.getQueryState(['Team', 'team-1'])?.isInvalidated === true), 'minimal: invalidated')
})

t.test('TanStack Query: the cache has the change when the application\'s own onNotification runs', async (t) => {
  const { app, client, queryClient } = await synced(t)
  const read: unknown[] = []
  let invalidated: boolean | undefined
  client.subscribe('RugbyGameState', 'match-1', { onNotification: () => read.push(queryClient.getQueryData(['RugbyGameState', 'match-1'])) })
  queryClient.setQueryData(['Team', 'team-1'], { name: 'Sharks' })
  client.subscribe('Team', 'team-1', { onNotification: () => { invalidated = queryClient.getQueryState(['Team', 'team-1'])?.isInvalidated } })
  await waitFor(() => app.changefeed.stats().subscriptions.active === 2)
  await app.changefeed.publish({ entityType: 'RugbyGameState', entityId: 'match-1', changeType: 'updated', payload: { homeScore: 7, awayScore: 3 } })
  t.ok(await waitFor(() => read.length === 1))
  t.same(read, [{ homeScore: 7, awayScore: 3 }], 'full: the handler reads the new document from the cache')
  await app.changefeed.publish({ entityType: 'Team', entityId: 'team-1', changeType: 'updated' })
  t.ok(await waitFor(() => invalidated !== undefined))
  t.equal(invalidated, true, 'minimal: the query is invalidated when the handler runs')
})
