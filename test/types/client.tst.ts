/** The SDK's WebSocket option takes Node's `ws` and the browser's WebSocket, under `strict`. */
import WebSocket from 'ws'
import { expect, test } from 'tstyche'
import { ChangefeedClient, type ClientOptions } from 'fastify-changefeed/client'

const url = 'ws://127.0.0.1:8080/ws'

test('the documented Node setup: WebSocket from ws', () => {
  expect(new ChangefeedClient({ url, WebSocket })).type.toBe<ChangefeedClient>()
  expect<ClientOptions>().type.toBeAssignableFrom({ url, WebSocket, autoConnect: false })
})

test('the browser WebSocket', () => {
  expect<ClientOptions>().type.toBeAssignableFrom({ url, WebSocket: globalThis.WebSocket })
})

test('something that is not a WebSocket is refused', () => {
  expect<ClientOptions>().type.not.toBeAssignableFrom({ url, WebSocket: Date })
  expect<ClientOptions>().type.not.toBeAssignableFrom({ url, WebSocket: class { constructor (readonly url: string) {} } })
})

test('typed entities reach the notification payload', () => {
  type Entities = { RugbyGameState: { homeScore: number, awayScore: number } }
  const client = new ChangefeedClient<Entities>({ url, WebSocket })
  client.subscribe('RugbyGameState', 'match-1', {
    onNotification: (n) => { expect(n.payload).type.toBe<{ homeScore: number, awayScore: number } | null | undefined>() }
  })
  expect(client.subscribe).type.not.toBeCallableWith('Team', 'team-1', {})
})
