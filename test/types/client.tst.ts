/**
 * The SDK's WebSocket option takes Node's `ws` and the browser's WebSocket, under `strict`; a client typed by its
 * entity map is taken by the React and TanStack adapters; error codes are typed by the protocol; snapshots, requests
 * for many and live queries are typed by the entity map, and filters by the protocol's conditions; subscribe() and
 * subscribeWhere() hand out handles of one shape, each also the function that closes it.
 */
import WebSocket from 'ws'
import { expect, test } from 'tstyche'
import {
  ChangefeedClient, type ClientOptions, type EntityMap, type EntitySnapshot, type EntitySubscription, type LiveQuery, type LiveQueryState, type WireErrorCode
} from 'fastify-changefeed/client'
import { ChangefeedProvider, useChangefeedClient, useEntities, useEntity, useLiveQuery } from 'fastify-changefeed/react'
import { syncQueryClient } from 'fastify-changefeed/tanstack'

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

test('a typed client goes wherever a client of any entity map is taken (React provider, TanStack adapter)', () => {
  type Entities = { RugbyGameState: { homeScore: number }, Team: { name: string } }
  const client = new ChangefeedClient<Entities>({ url, WebSocket })
  expect<ChangefeedClient<EntityMap>>().type.toBeAssignableFrom(client)
  expect<ChangefeedClient<Entities>>().type.not.toBeAssignableFrom(new ChangefeedClient<{ Team: { label: number } }>({ url }))
  expect(ChangefeedProvider).type.toBeCallableWith({ client })
  expect(syncQueryClient).type.toBeCallableWith(client, { invalidateQueries: () => {}, setQueryData: () => {} })
  expect(useChangefeedClient<Entities>()).type.toBe<ChangefeedClient<Entities>>()
  expect(useEntity<Entities, 'Team'>('Team', 'team-1')).type.toBe<{ name: string } | null | undefined>()
})

test('error codes are the protocol\'s', () => {
  const client = new ChangefeedClient({ url, WebSocket })
  client.subscribe('Team', 'team-1', { onError: (code) => { expect(code).type.toBe<WireErrorCode>() } })
  expect(client.subscribe('Team', 'team-1').getSnapshot().error?.code).type.toBe<WireErrorCode | undefined>()
})

test('live queries: snapshots, many entities and filtered feeds carry the entity map\'s documents', () => {
  type Player = { name: string, teamId: string }
  type Entities = { Player: Player }
  const client = new ChangefeedClient<Entities>({ url, WebSocket })
  client.subscribe('Player', 'p1', { onSnapshot: (s) => { expect(s.payload).type.toBe<Player | null | undefined>() } })
  client.subscribeMany('Player', ['p1', 'p2'], { onError: (code, _message, entityId) => { expect(code).type.toBe<WireErrorCode>(); expect(entityId).type.toBe<string>() } })
  expect(client.subscribeMany).type.not.toBeCallableWith('Team', ['t1'])
  const query = client.subscribeWhere('Player', { teamId: 'team-1', position: ['wing', 'centre'], 'venue.city': null })
  expect(query).type.toBe<LiveQuery<Player>>()
  expect(query.entities).type.toBe<ReadonlyMap<string, Player>>()
  expect(client.subscribeWhere).type.not.toBeCallableWith('Player', { teamId: { nested: true } })
  expect(client.subscribeWhere).type.not.toBeCallableWith('Player', { teamId: [['nested']] })
  expect(useEntities<Entities, 'Player'>('Player', ['p1'])).type.toBe<ReadonlyMap<string, EntitySnapshot<Player>>>()
  expect(useLiveQuery<Entities, 'Player'>('Player', { teamId: 'team-1' })).type.toBe<LiveQueryState<Player>>()
})

test('subscribe() and subscribeWhere() hand out handles of one shape, typed by the entity map', () => {
  type Player = { name: string, teamId: string }
  type Entities = { Player: Player }
  const client = new ChangefeedClient<Entities>({ url, WebSocket })
  const player = client.subscribe('Player', 'p1', { onChange: (state, entityId) => { expect(state).type.toBe<EntitySnapshot<Player>>(); expect(entityId).type.toBe<string>() } })
  expect(player).type.toBe<EntitySubscription<Player>>()
  expect(player.payload).type.toBe<Player | null | undefined>()
  expect(player.status).type.toBe<'pending' | 'subscribed' | 'error'>()
  expect(player.getSnapshot()).type.toBe<EntitySnapshot<Player>>()
  expect(client.peek('Player', 'p1')).type.toBe<EntitySnapshot<Player>>()
  expect(player.onChange).type.toBeCallableWith((state: EntitySnapshot<Player>) => state.revision)
  // what subscribe() returned before handles: a function that stops it
  expect<() => void>().type.toBeAssignableFrom(player)
  const query = client.subscribeWhere('Player', { teamId: 'team-1' })
  expect(query.status).type.toBe<'pending' | 'ready' | 'error'>()
  expect(query.getSnapshot()).type.toBe<LiveQueryState<Player>>()
  expect(client.peekWhere('Player', { teamId: 'team-1' })).type.toBe<LiveQueryState<Player>>()
  expect<() => void>().type.toBeAssignableFrom(query)
  expect(client.peek).type.not.toBeCallableWith('Team', 't1')
})
