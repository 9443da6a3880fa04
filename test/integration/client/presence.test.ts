/**
 * The SDK's presence against a real server: `client.presence()` keeps a live members map from the reply and the
 * batched events, `set(info)` is an update (no leave and join), signals reach the other clients' `onSignal` and not
 * the sender's, a refused join is the handle's error, the last `close()` leaves while the entity stays subscribed,
 * and a reconnect joins again with the latest info.
 */
import t from 'tap'
import WebSocket from 'ws'
import { ChangefeedClient, type PresenceHandle, type PresenceState } from '../../../lib/client/index.js'
import { startApp } from '../../helpers/app.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string): string => signHs256({ sub, exp: now() + 600 }, SECRET)
const options = {
  entities: { Team: { access: 'public' as const, presence: { intervalMs: 30 }, signals: true } },
  auth: { jwt: { secret: SECRET } }
}
const infos = (state: PresenceState): Record<string, unknown> => Object.fromEntries([...state.members].map(([id, m]) => [id, m.info]))

t.test('members, updates, signals and leaving through the SDK', async (t) => {
  const { app, url } = await startApp(t, options)
  const clients: ChangefeedClient[] = []
  const open = (user?: string): ChangefeedClient => {
    const c = new ChangefeedClient({ url, WebSocket: WebSocket as never, getToken: user === undefined ? undefined : () => token(user) })
    clients.push(c)
    return c
  }
  t.teardown(() => { for (const c of clients) c.destroy() })
  const [alice, bob, anonymous] = [open('alice'), open('bob'), open()]

  const a = alice.presence<{ editing: string }>('Team', 'team-1', { info: { editing: 'lineup' } })
  const b = bob.presence<{ editing: string }>('Team', 'team-1', { info: { editing: 'bench' } })
  const events: unknown[] = []
  a.on({ onEvent: (e) => events.push(e) })
  t.ok(await until(() => a.count === 2 && b.count === 2), 'both see both')
  t.same(infos(a.getSnapshot()), { alice: { editing: 'lineup' }, bob: { editing: 'bench' } })
  t.equal(a.status, 'live')

  b.set({ editing: 'player-7' })
  t.ok(await until(() => (a.members.get('bob')?.info as { editing: string } | undefined)?.editing === 'player-7'), 'an info change reaches the other')
  t.notOk(events.some((e) => JSON.stringify(e).includes('"left"')), 'as an update: no leave')

  const signals: unknown[] = []
  const own: unknown[] = []
  a.on({ onSignal: (s) => signals.push(s) })
  b.on({ onSignal: (s) => own.push(s) })
  b.signal({ cursor: [3, 4] })
  t.ok(await until(() => signals.length === 1))
  t.same(signals, [{ userId: 'bob', data: { cursor: [3, 4] } }])
  t.same(own, [], 'not echoed')

  const refused = anonymous.presence('Team', 'team-1', { info: { x: 1 } })
  t.ok(await until(() => refused.status === 'error'))
  t.equal(refused.error?.code, WireError.unauthenticated)
  const watching = anonymous.presence('Team', 'team-1')
  t.ok(await until(() => watching.status === 'live' && watching.count === 2), 'watching without joining')
  const errors: string[] = []
  watching.on({ onError: (code) => errors.push(code) })
  watching.signal({ cursor: [0, 0] })
  t.ok(await until(() => errors.length === 1))
  t.same(errors, [WireError.notMember], 'a refused signal reaches the handle')

  const held = bob.subscribe('Team', 'team-1')
  b.close()
  t.ok(await until(() => a.count === 1 && !a.members.has('bob')), 'the last close leaves')
  t.equal(app.changefeed.stats().subscriptions.active, 3, 'the entity stays subscribed while held (a socket each)')
  held.close()

  const changes: Array<PresenceHandle<{ editing: string }>> = []
  const again = bob.presence<{ editing: string }>('Team', 'team-1', { info: { editing: 'again' } })
  again.onChange(() => changes.push(again))
  t.ok(await until(() => a.members.has('bob')))
  for (const socket of app.websocketServer.clients) socket.terminate()
  t.ok(await until(() => again.status === 'pending'), 'pending while the socket is down')
  t.ok(await until(() => again.status === 'live' && again.count === 2, 10_000), 'a reconnect joins again')
  t.same(again.members.get('bob')?.info, { editing: 'again' })
  t.ok(changes.length > 0)
})
