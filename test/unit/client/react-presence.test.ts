/**
 * The React presence hooks in a DOM (jsdom), against the real server: `usePresence` joins under StrictMode, shows
 * the other members, sets a new info in place (an update, no leave) and leaves on unmount; `useSignals` hears the
 * other client's signals.
 */
import t from 'tap'
import { JSDOM } from 'jsdom'
import WebSocket from 'ws'
import { startApp } from '../../helpers/app.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { sleep, until } from '../../helpers/wait.js'

const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/' })
Object.assign(globalThis, { window: dom.window, document: dom.window.document, navigator: dom.window.navigator, IS_REACT_ACT_ENVIRONMENT: true })
const { StrictMode, createElement: h, useState } = await import('react')
const { render, act, cleanup } = await import('@testing-library/react')
const { ChangefeedClient } = await import('../../../lib/client/index.js')
const { ChangefeedProvider, usePresence, useSignals } = await import('../../../lib/client/react.js')

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string): string => signHs256({ sub, exp: now() + 600 }, SECRET)
const waitFor = async (check: () => boolean, ms = 5000): Promise<boolean> => await until(check, ms, async () => { await act(async () => { await sleep(10) }) })

t.test('usePresence and useSignals', async (t) => {
  const { app, url } = await startApp(t, { entities: { Team: { access: 'public', presence: { intervalMs: 20 }, signals: true } }, auth: { jwt: { secret: SECRET } } })
  const alice = new ChangefeedClient({ url, WebSocket: WebSocket as never, getToken: () => token('alice') })
  const bob = new ChangefeedClient({ url, WebSocket: WebSocket as never, getToken: () => token('bob') })
  t.teardown(() => { cleanup(); alice.destroy(); bob.destroy() })
  let setEditing: (editing: string) => void = () => {}
  let sendSignal: (data: unknown) => void = () => {}
  const heard: unknown[] = []
  function Editors (): ReturnType<typeof h> {
    const [editing, set] = useState('lineup')
    setEditing = set
    const presence = usePresence<{ editing: string }>('Team', 'team-1', { editing })
    sendSignal = presence.signal
    useSignals('Team', 'team-1', (signal) => heard.push(signal))
    const others = [...presence.members.values()].map((m) => `${m.userId}:${m.info?.editing ?? '-'}`).sort().join(',')
    return h('p', { 'data-testid': 'who' }, `${presence.status} ${presence.count} ${others}`)
  }
  const view = render(h(StrictMode, null, h(ChangefeedProvider, { client: alice }, h(Editors))))
  t.ok(await waitFor(() => view.getByTestId('who').textContent === 'live 1 alice:lineup'), 'joined under StrictMode, once')
  const b = bob.presence<{ editing: string }>('Team', 'team-1', { info: { editing: 'bench' } })
  t.ok(await waitFor(() => view.getByTestId('who').textContent === 'live 2 alice:lineup,bob:bench'), 'the other member shows')
  const seen: unknown[] = []
  b.on({ onEvent: (e) => seen.push(e) })
  act(() => setEditing('player-7'))
  t.ok(await waitFor(() => b.members.get('alice')?.info?.editing === 'player-7'), 'a new info reaches the others')
  t.notOk(seen.some((e) => JSON.stringify(e).includes('left')), 'as an update')
  b.signal({ cursor: 1 })
  t.ok(await waitFor(() => heard.length === 1), 'useSignals hears the other client')
  t.same(heard, [{ userId: 'bob', data: { cursor: 1 } }])
  const got: unknown[] = []
  b.on({ onSignal: (s) => got.push(s) })
  act(() => sendSignal('hi'))
  t.ok(await waitFor(() => got.length === 1), 'usePresence().signal sends')
  view.unmount()
  t.ok(await waitFor(() => b.count === 1 && !b.members.has('alice')), 'unmount leaves')
  t.ok(await waitFor(() => app.changefeed.stats().subscriptions.active === 1), 'and unsubscribes')
})
