/**
 * A socket that does not open in time (`connectTimeoutMs`) is given up and the next try goes to another URL: on a
 * fake clock with a fake WebSocket, and over loopback against an instance that takes the connection and never answers
 * the upgrade (a connect can otherwise wait as long as the runtime lets it).
 */
import t from 'tap'
import { createServer, type Socket } from 'node:net'
import WebSocket from 'ws'
import { ChangefeedClient, type StateChange } from '../../../lib/client/index.js'
import { ScriptedServer } from '../../helpers/scripted-server.js'
import { until } from '../../helpers/wait.js'
import { fakeClock, turn } from '../fixtures/fakes.js'
import { fakeSockets } from '../fixtures/sockets.js'

t.test('a socket not open within connectTimeoutMs is given up; the next goes to another URL', async (t) => {
  const clock = fakeClock(t)
  const { WebSocket: Fake, sockets } = fakeSockets()
  const changes: StateChange[] = []
  const client = new ChangefeedClient({ url: ['ws://a', 'ws://b'], WebSocket: Fake, random: () => 0, connectTimeoutMs: 5000, backoff: { initialMs: 100 } })
  t.teardown(() => client.destroy())
  client.onState((change) => changes.push(change))
  await turn()
  t.equal(sockets.length, 1)
  clock.advance(4999)
  t.equal(sockets[0].closedWith, undefined, 'not before its time')
  clock.advance(1)
  t.equal(sockets[0].closedWith, 4000, 'given up')
  t.match(changes.at(-1), { to: 'reconnecting', reason: 'connect timed out', code: 1006 })
  clock.advance(100)
  await turn()
  t.equal(sockets.length, 2, 'another try')
  t.not(sockets[1].url, sockets[0].url, 'at another URL')
  sockets[1].open()
  clock.advance(60_000)
  t.equal(sockets[1].closedWith, undefined, 'an open socket is not timed out')
  t.equal(client.state, 'open')
})

t.test('over loopback: an instance that takes the connection and never answers is left for one that does', async (t) => {
  const held: Socket[] = []
  const silent = createServer((socket) => { held.push(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { for (const s of held) s.destroy(); silent.close() })
  const server = await ScriptedServer.start(t)
  const silentUrl = `ws://127.0.0.1:${(silent.address() as { port: number }).port}/ws`
  const client = new ChangefeedClient({ url: [silentUrl, server.url], WebSocket: WebSocket as never, random: () => 0, connectTimeoutMs: 300, backoff: { initialMs: 10 } })
  t.teardown(() => client.destroy())
  await server.socket()
  t.ok(await until(() => client.state === 'open'), 'open on the instance that answers')
  t.equal(held.length, 1, 'after the silent one took the first connection')
})
